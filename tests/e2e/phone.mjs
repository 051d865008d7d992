// Phone sign-in through the official client, the codes read from what a
// stand-in Twilio received: node phone.mjs <base-url> <service-key> <mailbox> <provider>.
import assert from 'node:assert/strict';
import { runEverywhere } from './harness.mjs';
import { AuthClient } from '@supabase/auth-js';

const [base, , , provider] = process.argv.slice(2);
if (!base || !provider) {
  console.error('usage: node phone.mjs <base-url> <service-key> <mailbox> <provider>');
  process.exit(2);
}

const ok = (r, what) => assert.equal(r.error, null, `${what}: ${r.error}`);

// The code in the newest message to `phone` (E.164 digits), waiting for it
// to be the `n`th one that number got.
async function code(phone, n) {
  for (let i = 0; i < 100; i++) {
    const got = await (await fetch(`${provider}/_received`)).json();
    const to = got.filter((r) => r.form.To === `+${phone}`);
    if (to.length >= n) {
      const body = to[n - 1].form.Body;
      assert.match(body, /^Your code is \d{6}$/);
      return body.split(' ').pop();
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no message #${n} to ${phone}`);
}

async function scenarios(url, tag) {
  const auth = new AuthClient({ url, autoRefreshToken: false, persistSession: true });
  const stamp = String(Date.now()).slice(-8);
  const phone = `1${tag === 'root' ? 1 : 2}0${stamp}`;
  const newPhone = `1${tag === 'root' ? 1 : 2}9${stamp}`;

  // signUp with a phone: no session until the SMS code is verified.
  const signedUp = await auth.signUp({ phone: `+${phone}`, password: 'secret123' });
  ok(signedUp, 'signUp');
  assert.equal(signedUp.data.session, null);
  assert.equal(signedUp.data.user.phone, phone);

  // resend gives a new code; only it confirms.
  const resent = await auth.resend({ type: 'sms', phone });
  ok(resent, 'resend');
  // As GoTrue: the provider's message id is not told (it would tell a
  // registered number from an unknown one).
  assert.equal(resent.data.messageId, undefined);
  const stale = await auth.verifyOtp({ phone, token: await code(phone, 1), type: 'sms' });
  assert.equal(stale.error?.code, 'otp_expired');
  const confirmed = await auth.verifyOtp({ phone, token: await code(phone, 2), type: 'sms' });
  ok(confirmed, 'verifyOtp sms');
  assert.ok(confirmed.data.session.access_token);
  assert.ok(confirmed.data.user.phone_confirmed_at);
  ok(await auth.signOut(), 'signOut');

  // signInWithOtp with a phone, then verifyOtp.
  const asked = await auth.signInWithOtp({ phone });
  ok(asked, 'signInWithOtp');
  assert.equal(asked.data.messageId, undefined);
  const signedIn = await auth.verifyOtp({ phone, token: await code(phone, 3), type: 'sms' });
  ok(signedIn, 'verifyOtp sign-in');
  assert.equal((await auth.getUser()).data.user.phone, phone);

  // updateUser with a new phone, confirmed by the code sent to it.
  const changing = await auth.updateUser({ phone: newPhone });
  ok(changing, 'updateUser phone');
  assert.equal(changing.data.user.new_phone, newPhone);
  const changed = await auth.verifyOtp({ phone: newPhone, token: await code(newPhone, 1), type: 'phone_change' });
  ok(changed, 'verifyOtp phone_change');
  assert.equal(changed.data.user.phone, newPhone);

  // The password works with the new number.
  const again = new AuthClient({ url, autoRefreshToken: false, persistSession: false });
  ok(await again.signInWithPassword({ phone: newPhone, password: 'secret123' }), 'signInWithPassword phone');

  // A phone second factor: enroll, challenge by SMS, verify; the session is aal2.
  const factorPhone = `1${tag === 'root' ? 1 : 2}8${stamp}`;
  const enrolled = await auth.mfa.enroll({ factorType: 'phone', phone: `+${factorPhone}` });
  ok(enrolled, 'mfa.enroll phone');
  assert.equal(enrolled.data.type, 'phone');
  const challenge = await auth.mfa.challenge({ factorId: enrolled.data.id, channel: 'sms' });
  ok(challenge, 'mfa.challenge');
  ok(
    await auth.mfa.verify({ factorId: enrolled.data.id, challengeId: challenge.data.id, code: await code(factorPhone, 1) }),
    'mfa.verify',
  );
  const aal = await auth.mfa.getAuthenticatorAssuranceLevel();
  ok(aal, 'aal');
  assert.equal(aal.data.currentLevel, 'aal2');
  assert.ok(aal.data.currentAuthenticationMethods.some((m) => m.method === 'mfa/phone'));
  const listed = await auth.mfa.listFactors();
  ok(listed, 'listFactors');
  assert.deepEqual(listed.data.phone.map((f) => f.id), [enrolled.data.id]);
}

await runEverywhere(base, scenarios);
