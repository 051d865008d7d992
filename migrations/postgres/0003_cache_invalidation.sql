-- castellan: tell every castellan process sharing this database when a user,
-- one of their identities or one of their sessions changes, so session caches
-- drop it. pg_notify inside the writing transaction is delivered exactly when
-- that transaction commits (and not at all if it rolls back). Guarded, so an
-- existing GoTrue database keeps working: only triggers are added.
CREATE OR REPLACE FUNCTION auth.castellan_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    uid uuid;
BEGIN
    IF TG_TABLE_NAME = 'users' THEN
        uid := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
    ELSE
        uid := CASE WHEN TG_OP = 'DELETE' THEN OLD.user_id ELSE NEW.user_id END;
    END IF;
    PERFORM pg_notify('castellan_cache', uid::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS castellan_cache_users ON auth.users;
CREATE TRIGGER castellan_cache_users AFTER UPDATE OR DELETE ON auth.users
    FOR EACH ROW EXECUTE FUNCTION auth.castellan_notify_change();

DROP TRIGGER IF EXISTS castellan_cache_identities ON auth.identities;
CREATE TRIGGER castellan_cache_identities AFTER INSERT OR UPDATE OR DELETE ON auth.identities
    FOR EACH ROW EXECUTE FUNCTION auth.castellan_notify_change();

-- A refresh touches refreshed_at/updated_at only: no notification for that.
DROP TRIGGER IF EXISTS castellan_cache_sessions ON auth.sessions;
CREATE TRIGGER castellan_cache_sessions AFTER DELETE OR UPDATE OF not_after, aal, user_id ON auth.sessions
    FOR EACH ROW EXECUTE FUNCTION auth.castellan_notify_change();
