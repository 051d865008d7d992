// The admin API through the official client: node admin.mjs <base-url> <service-key>
import assert from 'node:assert/strict';
import { runEverywhere } from './harness.mjs';
import { AuthClient, GoTrueAdminApi, AuthApiError } from '@supabase/auth-js';

const [base, serviceKey] = process.argv.slice(2);
if (!base || !serviceKey) {
  console.error('usage: node admin.mjs <base-url> <service-key>');
  process.exit(2);
}

async function scenarios(url, tag) {
  const admin = new GoTrueAdminApi({ url, headers: { Authorization: `Bearer ${serviceKey}`, apikey: serviceKey } });
  const email = (n) => `admin-${tag}-${n}@example.com`;

  // createUser.
  const created = [];
  for (const n of [1, 2, 3]) {
    const { data, error } = await admin.createUser({ email: email(n), password: 'secret123', email_confirm: true, user_metadata: { n } });
    assert.equal(error, null, String(error));
    assert.equal(data.user.email, email(n));
    created.push(data.user);
  }

  // listUsers, paging through the Link header.
  const first = await admin.listUsers({ page: 1, perPage: 2 });
  assert.equal(first.error, null, String(first.error));
  assert.equal(first.data.users.length, 2);
  assert.ok(first.data.total >= 3, `total ${first.data.total}`);
  assert.equal(first.data.nextPage, 2);
  assert.ok(first.data.lastPage >= 2);
  const second = await admin.listUsers({ page: first.data.nextPage, perPage: 2 });
  assert.equal(second.error, null);
  assert.ok(second.data.users.length >= 1);
  const all = await admin.listUsers();
  assert.equal(all.error, null, String(all.error));
  const ids = all.data.users.map((u) => u.id);
  for (const u of created) assert.ok(ids.includes(u.id));

  // getUserById, updateUserById.
  const got = await admin.getUserById(created[0].id);
  assert.equal(got.error, null);
  assert.equal(got.data.user.email, email(1));
  const upd = await admin.updateUserById(created[0].id, { user_metadata: { n: null, role: 'lead' }, ban_duration: '1h' });
  assert.equal(upd.error, null, String(upd.error));
  assert.deepEqual(upd.data.user.user_metadata, { role: 'lead', email_verified: true });
  assert.ok(upd.data.user.banned_until);
  const banned = await new AuthClient({ url, autoRefreshToken: false }).signInWithPassword({ email: email(1), password: 'secret123' });
  assert.equal(banned.error?.code, 'user_banned');

  // deleteUser, hard and soft.
  const hard = await admin.deleteUser(created[1].id);
  assert.equal(hard.error, null, String(hard.error));
  const gone = await admin.getUserById(created[1].id);
  assert.ok(gone.error instanceof AuthApiError);
  assert.equal(gone.error.code, 'user_not_found');
  const soft = await admin.deleteUser(created[2].id, true);
  assert.equal(soft.error, null, String(soft.error));
  const ghost = await admin.getUserById(created[2].id);
  assert.ok(ghost.data.user.deleted_at, 'soft-deleted user keeps its row');
  assert.notEqual(ghost.data.user.email, email(3));

  // A non-admin key is refused.
  const user = new AuthClient({ url, autoRefreshToken: false });
  const s = await user.signUp({ email: email(4), password: 'secret123' });
  assert.equal(s.error, null, String(s.error));
  const notAdmin = new GoTrueAdminApi({ url, headers: { Authorization: `Bearer ${s.data.session.access_token}` } });
  const refused = await notAdmin.listUsers();
  assert.ok(refused.error instanceof AuthApiError);
  assert.equal(refused.error.code, 'not_admin');
  assert.equal(refused.error.status, 403);

  // The OAuth server's clients, through auth-js's admin.oauth.
  const made = await admin.oauth.createClient({
    client_name: `app-${tag}`,
    redirect_uris: ['https://app.test/callback'],
  });
  assert.equal(made.error, null, String(made.error));
  assert.equal(made.data.client_type, 'confidential');
  assert.ok(made.data.client_secret);
  const id = made.data.client_id;
  const listed = await admin.oauth.listClients({ page: 1, perPage: 50 });
  assert.equal(listed.error, null, String(listed.error));
  assert.ok(listed.data.clients.some((c) => c.client_id === id && !c.client_secret));
  const changed = await admin.oauth.updateClient(id, { client_name: `renamed-${tag}` });
  assert.equal(changed.data.client_name, `renamed-${tag}`);
  const again = await admin.oauth.regenerateClientSecret(id);
  assert.ok(again.data.client_secret && again.data.client_secret !== made.data.client_secret);
  assert.equal((await admin.oauth.deleteClient(id)).error, null);
  const missing = await admin.oauth.getClient(id);
  assert.equal(missing.error.code, 'oauth_client_not_found');
  assert.equal(missing.error.status, 404);
}

await runEverywhere(base, scenarios);
