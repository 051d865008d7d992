// External sign-in through the official client, against a GitHub stand-in
// that approves at once: node oauth.mjs <base-url>. The script plays the
// browser: it follows the redirects by hand (the stand-in sends it back to
// castellan.test, which is the server under test).
import assert from 'node:assert/strict';
import { runEverywhere } from './harness.mjs';
import { AuthClient } from '@supabase/auth-js';

const [base] = process.argv.slice(2);
if (!base) {
  console.error('usage: node oauth.mjs <base-url>');
  process.exit(2);
}

const ok = (r, what) => assert.equal(r.error, null, `${what}: ${r.error}`);

// A memory store, so the PKCE verifier auth-js keeps survives between calls.
function memory() {
  const m = new Map();
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, v), removeItem: (k) => m.delete(k) };
}

// The browser's trip from an authorize URL (castellan's, or the provider's
// that linkIdentity answers) to the app: the code.
async function browse(url, serverUrl) {
  let provider = url;
  if (url.startsWith(serverUrl)) {
    const r = await fetch(url, { redirect: 'manual' });
    assert.equal(r.status, 302, `authorize: ${r.status} ${await r.text()}`);
    provider = r.headers.get('location');
  }
  let r = await fetch(provider, { redirect: 'manual' });
  assert.equal(r.status, 302, 'the provider sends the browser back');
  const back = new URL(r.headers.get('location'));
  assert.equal(back.origin, 'http://castellan.test');
  r = await fetch(`${serverUrl}/callback${back.search}`, { redirect: 'manual' });
  assert.equal(r.status, 302, 'callback');
  const landed = new URL(r.headers.get('location'));
  assert.equal(landed.origin + landed.pathname, 'http://app.test/done', landed.href);
  assert.equal(landed.searchParams.get('error'), null, landed.href);
  return landed.searchParams.get('code');
}

async function scenarios(url, tag) {
  const opts = { url, autoRefreshToken: false, persistSession: true, flowType: 'pkce', storage: memory() };

  // signInWithOAuth builds a URL the server takes; the code becomes a session.
  const auth = new AuthClient(opts);
  const started = await auth.signInWithOAuth({
    provider: 'github',
    options: { redirectTo: 'http://app.test/done', skipBrowserRedirect: true, queryParams: { login_hint: `new-${tag}` } },
  });
  ok(started, 'signInWithOAuth');
  const code = await browse(started.data.url, url);
  const exchanged = await auth.exchangeCodeForSession(code);
  ok(exchanged, 'exchangeCodeForSession');
  assert.equal(exchanged.data.user.email, `new-${tag}@example.com`);
  assert.equal(exchanged.data.session.provider_token, `gho_new-${tag}`);
  const ids = await auth.getUserIdentities();
  ok(ids, 'getUserIdentities');
  assert.deepEqual(ids.data.identities.map((i) => i.provider), ['github']);

  // An email user links a GitHub account, then unlinks it.
  const other = new AuthClient({ ...opts, storage: memory() });
  ok(await other.signUp({ email: `linker-${tag}-${Date.now()}@example.com`, password: 'secret123' }), 'signUp');
  const linking = await other.linkIdentity({
    provider: 'github',
    options: { redirectTo: 'http://app.test/done', skipBrowserRedirect: true, queryParams: { login_hint: `link-${tag}` } },
  });
  ok(linking, 'linkIdentity');
  ok(await other.exchangeCodeForSession(await browse(linking.data.url, url)), 'exchange after linking');
  let mine = await other.getUserIdentities();
  assert.deepEqual(mine.data.identities.map((i) => i.provider).sort(), ['email', 'github']);
  const github = mine.data.identities.find((i) => i.provider === 'github');
  ok(await other.unlinkIdentity(github), 'unlinkIdentity');
  mine = await other.getUserIdentities();
  assert.deepEqual(mine.data.identities.map((i) => i.provider), ['email']);

  // linkIdentity with an ID token (no browser): the issuer's identity joins
  // the signed-in user, whose email stays.
  const linkToken = JSON.parse(process.env.CASTELLAN_E2E_LINK_ID_TOKENS)[tag];
  const linked = await other.linkIdentity({ provider: 'keycloak', token: linkToken });
  ok(linked, 'linkIdentity with an ID token');
  assert.equal(linked.data.user.id, mine.data.identities[0].user_id);
  assert.equal(linked.data.user.email, mine.data.identities[0].identity_data.email);
  mine = await other.getUserIdentities();
  assert.deepEqual(mine.data.identities.map((i) => i.provider).sort(), ['email', 'keycloak']);
  const again = await other.linkIdentity({ provider: 'keycloak', token: linkToken });
  assert.equal(again.error?.code, 'identity_already_exists', 'linked once only');

  // signInWithIdToken: an OpenID Connect ID token from an enabled issuer
  // (the test's, standing in for Keycloak) signs in.
  const native = new AuthClient({ ...opts, storage: memory() });
  const byToken = await native.signInWithIdToken({ provider: 'keycloak', token: process.env.CASTELLAN_E2E_ID_TOKEN });
  ok(byToken, 'signInWithIdToken');
  assert.equal(byToken.data.user.email, 'kc@example.com');
  assert.equal(byToken.data.user.app_metadata.provider, 'keycloak');
  const forged = await native.signInWithIdToken({ provider: 'keycloak', token: `${process.env.CASTELLAN_E2E_ID_TOKEN}x` });
  assert.ok(forged.error, 'a forged token is refused');
}

await runEverywhere(base, scenarios);
