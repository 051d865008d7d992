// The custom access token hook through the official client:
//   node hooks.mjs <base-url>
// The server's hook adds `tenant_id: "acme"` to every access token; auth-js
// reads it back with getClaims() after a sign-up, a sign-in and a refresh.
import assert from 'node:assert/strict';
import { runEverywhere } from './harness.mjs';
import { AuthClient } from '@supabase/auth-js';

const [base] = process.argv.slice(2);
if (!base) {
  console.error('usage: node hooks.mjs <base-url>');
  process.exit(2);
}

async function tenantOf(auth) {
  const { data, error } = await auth.getClaims();
  assert.equal(error, null);
  return data.claims.tenant_id;
}

async function scenarios(url, tag) {
  const auth = new AuthClient({ url, autoRefreshToken: false, persistSession: false });
  const email = `hooks-${tag}-${Date.now()}@example.com`;
  const password = 'correct-horse-battery-9';

  const up = await auth.signUp({ email, password });
  assert.equal(up.error, null);
  assert.equal(await tenantOf(auth), 'acme');

  const { data: signedIn, error } = await auth.signInWithPassword({ email, password });
  assert.equal(error, null);
  assert.equal(await tenantOf(auth), 'acme');

  const refreshed = await auth.refreshSession({ refresh_token: signedIn.session.refresh_token });
  assert.equal(refreshed.error, null);
  // A new refresh token: the refresh went through (and through the hook).
  assert.notEqual(refreshed.data.session.refresh_token, signedIn.session.refresh_token);
  assert.equal(await tenantOf(auth), 'acme');
  // The claims auth-js read are the server's own: the session's user.
  const { data } = await auth.getClaims();
  assert.equal(data.claims.sub, signedIn.user.id);
  assert.equal(data.claims.email, email);
}

await runEverywhere(base, scenarios);
