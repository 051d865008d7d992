// The email flows through the official client:
// node email.mjs <base-url> <service-key> <mailbox-url>
import assert from 'node:assert/strict';
import { runEverywhere } from './harness.mjs';
import { AuthClient, GoTrueAdminApi, AuthApiError } from '@supabase/auth-js';

const [base, serviceKey, mailbox] = process.argv.slice(2);
if (!base || !serviceKey || !mailbox) {
  console.error('usage: node email.mjs <base-url> <service-key> <mailbox-url>');
  process.exit(2);
}

// Waits for the n-th message to `to` and returns its decoded text.
async function mail(to, n = 1) {
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    const all = await (await fetch(mailbox)).json();
    const mine = all.filter((m) => m.to.includes(to));
    if (mine.length >= n) return mine[n - 1].data;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no mail #${n} to ${to}`);
}
const code = (data) => data.match(/code: (\d{6,10})/)[1];
const link = (data) => {
  const i = data.indexOf('/verify?');
  const start = data.lastIndexOf('http', i);
  return data.slice(start).split(/[\s<"]/)[0].replace(/&amp;/g, '&');
};
// Emailed links name API_EXTERNAL_URL; follow them to the server under test.
const local = (url, prefix) => `${prefix}/verify${url.split('/verify')[1]}`;

function client(url, opts = {}) {
  return new AuthClient({ url, autoRefreshToken: false, persistSession: true, ...opts });
}

async function scenarios(url, tag) {
  const email = (n) => `email-${tag}-${n}@example.com`;

  // signInWithOtp for a new address: the confirmation code signs in.
  const a = client(url);
  const otp = await a.signInWithOtp({ email: email(1) });
  assert.equal(otp.error, null, String(otp.error));
  const first = await mail(email(1));
  const v = await a.verifyOtp({ email: email(1), token: code(first), type: 'email' });
  assert.equal(v.error, null, String(v.error));
  assert.ok(v.data.session?.access_token);
  assert.equal(v.data.user.email, email(1));
  const again = await client(url).verifyOtp({ email: email(1), token: code(first), type: 'email' });
  assert.ok(again.error instanceof AuthApiError);
  assert.equal(again.error.code, 'otp_expired');

  // resetPasswordForEmail + updateUser.
  const b = client(url);
  const reset = await b.resetPasswordForEmail(email(1), { redirectTo: 'http://app.test/reset' });
  assert.equal(reset.error, null, String(reset.error));
  const rec = await mail(email(1), 2);
  assert.ok(link(rec).includes('type=recovery&redirect_to=http://app.test/reset'), link(rec));
  const rv = await b.verifyOtp({ email: email(1), token: code(rec), type: 'recovery' });
  assert.equal(rv.error, null, String(rv.error));
  const up = await b.updateUser({ password: 'reset-password-1' });
  assert.equal(up.error, null, String(up.error));
  const signin = await client(url).signInWithPassword({ email: email(1), password: 'reset-password-1' });
  assert.equal(signin.error, null, String(signin.error));

  // inviteUserByEmail, accepted with the invite code.
  const admin = new GoTrueAdminApi({ url, headers: { Authorization: `Bearer ${serviceKey}` } });
  const inv = await admin.inviteUserByEmail(email(2), { data: { team: 'blue' } });
  assert.equal(inv.error, null, String(inv.error));
  assert.ok(inv.data.user.invited_at);
  const invite = await mail(email(2));
  const iv = await client(url).verifyOtp({ email: email(2), token: code(invite), type: 'invite' });
  assert.equal(iv.error, null, String(iv.error));
  assert.equal(iv.data.user.user_metadata.team, 'blue');

  // generateLink: nothing is sent; the returned code works.
  const gl = await admin.generateLink({ type: 'magiclink', email: email(1) });
  assert.equal(gl.error, null, String(gl.error));
  assert.equal(gl.data.properties.verification_type, 'magiclink');
  assert.ok(gl.data.properties.action_link.includes('type=magiclink'));
  const gv = await client(url).verifyOtp({ email: email(1), token: gl.data.properties.email_otp, type: 'magiclink' });
  assert.equal(gv.error, null, String(gv.error));

  // PKCE: the link answers 303 to ?code=, exchanged once.
  const p = client(url, { flowType: 'pkce' });
  const po = await p.signInWithOtp({ email: email(1), options: { shouldCreateUser: false, emailRedirectTo: 'http://app.test/cb' } });
  assert.equal(po.error, null, String(po.error));
  const pm = await mail(email(1), 3);
  assert.ok(link(pm).includes('token=pkce_'), link(pm));
  const res = await fetch(local(link(pm), url), { redirect: 'manual' });
  assert.equal(res.status, 303);
  const location = res.headers.get('location');
  assert.ok(location.startsWith('http://app.test/cb?code='), location);
  const authCode = new URL(location).searchParams.get('code');
  const ex = await p.exchangeCodeForSession(authCode);
  assert.equal(ex.error, null, String(ex.error));
  assert.equal(ex.data.user.email, email(1));
  const ex2 = await client(url, { flowType: 'pkce' }).exchangeCodeForSession(authCode);
  assert.ok(ex2.error, 'a code is exchanged once');
}

await runEverywhere(base, scenarios);
