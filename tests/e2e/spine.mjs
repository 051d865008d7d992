// The spine through the official client: node spine.mjs <base-url>
// Runs every scenario against <base-url> and <base-url>/auth/v1.
import assert from 'node:assert/strict';
import { runEverywhere } from './harness.mjs';
import { AuthClient, AuthApiError, AuthWeakPasswordError, isAuthApiError } from '@supabase/auth-js';

const base = process.argv[2];
if (!base) {
  console.error('usage: node spine.mjs <base-url>');
  process.exit(2);
}

function client(url) {
  return new AuthClient({ url, autoRefreshToken: false, persistSession: true });
}

async function scenarios(url, tag) {
  const email = `e2e-${tag}-${Date.now()}@example.com`;
  const auth = client(url);

  // signUp (autoconfirm) gives a session.
  const su = await auth.signUp({ email, password: 'secret123', options: { data: { plan: 'free' } } });
  assert.equal(su.error, null, String(su.error));
  assert.ok(su.data.session?.access_token, 'signUp returns a session');
  assert.equal(su.data.user.email, email);
  assert.equal(su.data.user.user_metadata.plan, 'free');

  // signInWithPassword.
  const si = await auth.signInWithPassword({ email, password: 'secret123' });
  assert.equal(si.error, null, String(si.error));
  assert.equal(si.data.user.id, su.data.user.id);
  assert.equal(si.data.session.token_type, 'bearer');

  // getUser.
  const gu = await auth.getUser();
  assert.equal(gu.error, null, String(gu.error));
  assert.equal(gu.data.user.id, su.data.user.id);

  // updateUser: metadata merge and a password change.
  const uu = await auth.updateUser({ data: { plan: 'pro', extra: 1 } });
  assert.equal(uu.error, null, String(uu.error));
  assert.equal(uu.data.user.user_metadata.plan, 'pro');
  assert.equal(uu.data.user.user_metadata.extra, 1);
  const pw = await auth.updateUser({ password: 'new-secret-456' });
  assert.equal(pw.error, null, String(pw.error));

  // refreshSession rotates the refresh token.
  const before = (await auth.getSession()).data.session.refresh_token;
  const rs = await auth.refreshSession();
  assert.equal(rs.error, null, String(rs.error));
  assert.notEqual(rs.data.session.refresh_token, before);

  // Errors arrive as the right classes with GoTrue's codes.
  const bad = await client(url).signInWithPassword({ email, password: 'secret123' });
  assert.ok(bad.error instanceof AuthApiError, 'old password is refused');
  assert.equal(bad.error.code, 'invalid_credentials');
  assert.equal(bad.error.status, 400);
  const weak = await client(url).signUp({ email: `weak-${email}`, password: 'abc' });
  assert.ok(weak.error instanceof AuthWeakPasswordError, `weak password class, got ${weak.error}`);
  assert.equal(weak.error.code, 'weak_password');
  assert.deepEqual(weak.error.reasons, ['length']);
  const dup = await client(url).signUp({ email, password: 'secret123' });
  assert.ok(isAuthApiError(dup.error));
  assert.equal(dup.error.code, 'user_already_exists');

  // signOut ends the session: the old refresh token is refused.
  const refresh = (await auth.getSession()).data.session.refresh_token;
  const so = await auth.signOut();
  assert.equal(so.error, null, String(so.error));
  assert.equal((await auth.getSession()).data.session, null);
  const after = await client(url).refreshSession({ refresh_token: refresh });
  assert.ok(after.error instanceof AuthApiError);
  assert.equal(after.error.code, 'refresh_token_not_found');

  // Anonymous sign-in.
  const anon = client(url);
  const an = await anon.signInAnonymously({ options: { data: { guest: true } } });
  assert.equal(an.error, null, String(an.error));
  assert.equal(an.data.user.is_anonymous, true);
  assert.equal(an.data.user.user_metadata.guest, true);
  const anu = await anon.getUser();
  assert.equal(anu.data.user.id, an.data.user.id);
}

await runEverywhere(base, scenarios);
