// CAPTCHA and leaked passwords through the official client:
//   node bots.mjs <base-url> <captcha-issue-url> <leaked-password>
// The server checks CAPTCHA tokens with a stand-in provider that issues a
// token per POST to <captcha-issue-url> (a solved challenge), and passwords
// with a stand-in Have I Been Pwned that lists <leaked-password>.
import assert from 'node:assert/strict';
import { runEverywhere } from './harness.mjs';
import { AuthClient, isAuthApiError, isAuthWeakPasswordError } from '@supabase/auth-js';

const [base, issueUrl, leaked] = process.argv.slice(2);
if (!leaked) {
  console.error('usage: node bots.mjs <base-url> <captcha-issue-url> <leaked-password>');
  process.exit(2);
}

const solved = async () => (await fetch(issueUrl, { method: 'POST' })).text();

async function scenarios(url, tag) {
  const auth = new AuthClient({ url, autoRefreshToken: false, persistSession: false });
  const email = `bots-${tag}-${Date.now()}@example.com`;
  const password = 'correct-horse-battery-9';

  // No token: refused with GoTrue's code.
  let r = await auth.signUp({ email, password });
  assert.ok(isAuthApiError(r.error), `${r.error}`);
  assert.equal(r.error.code, 'captcha_failed');
  assert.equal(r.error.status, 400);

  // A solved challenge's token: signed up (autoconfirm: a session).
  r = await auth.signUp({ email, password, options: { captchaToken: await solved() } });
  assert.equal(r.error, null, `${r.error}`);
  assert.ok(r.data.session?.access_token);

  // Password sign-in asks for one too.
  r = await auth.signInWithPassword({ email, password });
  assert.equal(r.error?.code, 'captcha_failed');
  r = await auth.signInWithPassword({ email, password, options: { captchaToken: await solved() } });
  assert.equal(r.error, null, `${r.error}`);

  // A leaked password is a weak one, reason `pwned`.
  r = await auth.signUp({
    email: `pwned-${tag}-${Date.now()}@example.com`,
    password: leaked,
    options: { captchaToken: await solved() },
  });
  assert.ok(isAuthWeakPasswordError(r.error), `${r.error}`);
  assert.deepEqual(r.error.reasons, ['pwned']);
}

await runEverywhere(base, scenarios);
