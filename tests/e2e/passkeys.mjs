// Passkeys in a real browser: Debian's Chromium, driven by playwright-core,
// with a virtual platform authenticator (CDP's WebAuthn domain: internal
// transport, resident keys, user verification). A page served here on
// loopback loads @supabase/auth-js and runs the whole ceremony in the page:
//   node passkeys.mjs <base-url> <page-port> <service-key>
// Then a WebAuthn second factor on the same device raises a password
// sign-in to aal2.
// castellan's relying party is `localhost` at http://localhost:<page-port>.
// Chromium comes from $CASTELLAN_TEST_CHROMIUM (scripts/test.sh sets it).
import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import http from 'node:http';
import { chromium } from 'playwright-core';
import { runEverywhere } from './harness.mjs';

const [base, pagePort, serviceKey] = process.argv.slice(2);
if (!serviceKey) {
  console.error('usage: node passkeys.mjs <base-url> <page-port> <service-key>');
  process.exit(2);
}

// auth-js's ES modules import each other without extensions and import
// tslib by name: the server adds `.js`, the page's import map names tslib.
const authJs = new URL('./node_modules/@supabase/auth-js/dist/module/', import.meta.url);
const tslib = new URL('./node_modules/tslib/tslib.es6.mjs', import.meta.url);
const page = `<!doctype html><meta charset="utf-8"><title>passkeys</title>
<script type="importmap">{"imports": {"tslib": "/tslib.js"}}</script>
<script type="module">
  import { AuthClient, AuthAdminApi } from '/auth-js/index.js';
  window.AuthClient = AuthClient;
  window.AuthAdminApi = AuthAdminApi;
  window.ready = true;
</script>`;

async function file(path) {
  for (const candidate of [path, `${path}.js`, `${path}/index.js`]) {
    const u = new URL(candidate, authJs);
    if (!u.href.startsWith(authJs.href)) return null;
    if ((await stat(u).catch(() => null))?.isFile()) return readFile(u);
  }
  return null;
}

const server = http.createServer(async (req, res) => {
  const path = new URL(req.url, 'http://localhost').pathname;
  const js = (body) => res.writeHead(200, { 'content-type': 'text/javascript' }).end(body);
  if (path === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end(page);
  if (path === '/tslib.js') return js(await readFile(tslib));
  const body = path.startsWith('/auth-js/') ? await file(path.slice('/auth-js/'.length)) : null;
  if (body) return js(body);
  res.writeHead(404).end();
});
await new Promise((ok) => server.listen(Number(pagePort), '127.0.0.1', ok));
// The same page at another origin castellan does not list: the browser
// lets it use the relying party `localhost`, castellan refuses it.
const elsewhere = http.createServer((req, res) => server.emit('request', req, res));
await new Promise((ok) => elsewhere.listen(0, '127.0.0.1', ok));
const otherPort = elsewhere.address().port;

const browser = await chromium.launch({
  executablePath: process.env.CASTELLAN_TEST_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking'],
});

// A fresh page and authenticator per run: the browser's view of a device.
async function device() {
  const context = await browser.newContext();
  const tab = await context.newPage();
  const cdp = await context.newCDPSession(tab);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  await tab.goto(`http://localhost:${pagePort}/`);
  await tab.waitForFunction(() => window.ready === true);
  return { context, tab, cdp, authenticatorId };
}

// Runs `fn(url, arg)` in the page with a client of its own, as an app would.
const inPage = (tab, fn, url, arg) =>
  tab.evaluate(
    async ([source, url, arg]) => {
      const auth = new window.AuthClient({ url, autoRefreshToken: false, persistSession: true, storageKey: `sb-${url}` });
      // eslint-disable-next-line no-new-func
      return new Function('auth', 'arg', `return (${source})(auth, arg)`)(auth, arg);
    },
    [fn.toString(), url, arg],
  );

async function scenarios(url, tag) {
  const { context, tab, cdp, authenticatorId } = await device();
  try {
    const email = `passkey-${tag}-${Date.now()}@example.com`;
    // Sign up (autoconfirm), register a passkey, sign out.
    const registered = await inPage(tab, async (auth, email) => {
      const s = await auth.signUp({ email, password: 'correct-horse-battery-9' });
      if (s.error) return { step: 'signUp', error: String(s.error) };
      const r = await auth.registerPasskey();
      if (r.error) return { step: 'register', error: `${r.error.code}: ${r.error.message}` };
      await auth.signOut();
      return { passkey: r.data, user: s.data.user.id };
    }, url, email);
    assert.ok(registered.passkey?.id, JSON.stringify(registered));
    const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
    assert.equal(credentials.length, 1);
    assert.equal(credentials[0].isResidentCredential, true);

    // Sign in with the passkey alone: no address typed.
    const signedIn = await inPage(tab, async (auth) => {
      const r = await auth.signInWithPasskey();
      if (r.error) return { error: `${r.error.code}: ${r.error.message}` };
      const { data } = await auth.getSession();
      const list = await auth.passkey.list();
      const renamed = await auth.passkey.update({ passkeyId: list.data[0].id, friendlyName: 'This browser' });
      const after = await auth.passkey.list();
      return { user: r.data.user?.id, session: !!data.session, amr: JSON.parse(atob(data.session.access_token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).amr, list: after.data, renamed: renamed.data };
    }, url);
    assert.equal(signedIn.error, undefined, signedIn.error);
    assert.equal(signedIn.user, registered.user);
    assert.ok(signedIn.session);
    assert.equal(signedIn.amr[0].method, 'passkey');
    assert.equal(signedIn.list.length, 1);
    assert.equal(signedIn.list[0].friendly_name, 'This browser');
    assert.ok(signedIn.list[0].last_used_at);

    // The failures, each with GoTrue's code. A second registration is past
    // the maximum (one, here); the browser refuses nothing for us.
    const refused = await inPage(tab, async (auth) => {
      const again = await auth.registerPasskey();
      // A challenge answered twice: the second is not found.
      const start = await auth.passkey.startAuthentication();
      const options = PublicKeyCredential.parseRequestOptionsFromJSON(start.data.options);
      const credential = await navigator.credentials.get({ publicKey: options });
      const json = credential.toJSON();
      const first = await auth.passkey.verifyAuthentication({ challengeId: start.data.challenge_id, credential: json });
      const second = await auth.passkey.verifyAuthentication({ challengeId: start.data.challenge_id, credential: json });
      // A replayed assertion on a fresh challenge: its signature is not for it.
      const fresh = await auth.passkey.startAuthentication();
      const replay = await auth.passkey.verifyAuthentication({ challengeId: fresh.data.challenge_id, credential: json });
      return {
        again: again.error?.code,
        first: first.error?.code ?? 'ok',
        second: second.error?.code,
        replay: replay.error?.code,
      };
    }, url);
    assert.deepEqual(refused, {
      again: 'too_many_passkeys',
      first: 'ok',
      second: 'webauthn_challenge_not_found',
      replay: 'webauthn_verification_failed',
    });

    // Another site on this host (its origin is not one castellan lists):
    // the browser signs for the relying party, castellan refuses the origin.
    await tab.goto(`http://localhost:${otherPort}/`);
    await tab.waitForFunction(() => window.ready === true);
    const wrongOrigin = await inPage(tab, async (auth) => {
      const r = await auth.signInWithPasskey();
      return r.error?.code ?? 'signed in';
    }, url);
    assert.equal(wrongOrigin, 'webauthn_verification_failed');
    await tab.goto(`http://localhost:${pagePort}/`);
    await tab.waitForFunction(() => window.ready === true);

    // A WebAuthn second factor on the same device: registered in one
    // call, then a password sign-in raised to aal2 with it.
    // auth-js asks for a security key (cross-platform) as a second factor:
    // one is plugged in.
    const key = await cdp.send('WebAuthn.addVirtualAuthenticator', {
      options: {
        protocol: 'ctap2',
        transport: 'usb',
        hasResidentKey: false,
        hasUserVerification: true,
        isUserVerified: true,
        automaticPresenceSimulation: true,
      },
    });
    const factor = await inPage(tab, async (auth, email) => {
      const first = await auth.signInWithPassword({ email, password: 'correct-horse-battery-9' });
      if (first.error) return { step: 'password', error: String(first.error) };
      const reg = await auth.mfa.webauthn.register({ friendlyName: 'This browser key' });
      if (reg.error) return { step: 'register', error: `${reg.error.code}: ${reg.error.message}` };
      await auth.signOut();
      await auth.signInWithPassword({ email, password: 'correct-horse-battery-9' });
      const before = await auth.mfa.getAuthenticatorAssuranceLevel();
      const { data: factors } = await auth.mfa.listFactors();
      const id = factors.all.find((f) => f.factor_type === 'webauthn')?.id;
      const raised = await auth.mfa.webauthn.authenticate({ factorId: id });
      if (raised.error) return { step: 'authenticate', error: `${raised.error.code}: ${raised.error.message}` };
      const after = await auth.mfa.getAuthenticatorAssuranceLevel();
      return { registered: reg.data?.access_token ? 'aal2' : 'no session', before: before.data.currentLevel, after: after.data.currentLevel, status: factors.all.find((f) => f.id === id)?.status };
    }, url, email);
    assert.deepEqual(factor, { registered: 'aal2', before: 'aal1', after: 'aal2', status: 'verified' });
    // Unplugged again: a discoverable sign-in then meets one authenticator.
    await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId: key.authenticatorId });

    // The admin lists and deletes it; it then signs no one in.
    const admin = await inPage(tab, async (_, [url, key, user]) => {
      const api = new window.AuthAdminApi({ url, headers: { Authorization: `Bearer ${key}` } });
      const list = await api.passkey.listPasskeys({ userId: user });
      const del = await api.passkey.deletePasskey({ userId: user, passkeyId: list.data[0].id });
      return { n: list.data.length, error: del.error?.code ?? null };
    }, url, [url, serviceKey, registered.user]);
    assert.deepEqual(admin, { n: 1, error: null });
    const deleted = await inPage(tab, async (auth) => {
      await auth.signOut();
      const r = await auth.signInWithPasskey();
      return r.error?.code;
    }, url);
    assert.equal(deleted, 'webauthn_verification_failed');
  } finally {
    await context.close();
  }
}

await runEverywhere(base, scenarios, async () => {
  await browser.close();
  server.close();
  elsewhere.close();
});
