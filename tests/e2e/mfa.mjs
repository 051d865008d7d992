// Multi-factor authentication through the official client:
// node mfa.mjs <base-url> <service-key>. The codes come from Node's own
// HMAC-SHA1 (RFC 6238), not from the server's library.
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { runEverywhere } from './harness.mjs';
import { AuthClient, GoTrueAdminApi } from '@supabase/auth-js';

const [base, serviceKey] = process.argv.slice(2);
if (!base || !serviceKey) {
  console.error('usage: node mfa.mjs <base-url> <service-key>');
  process.exit(2);
}

function base32(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of s.replace(/=+$/, '')) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

// The code for the step `offset` periods from now.
function totp(secret, offset = 0) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 1000 / 30) + offset));
  const mac = createHmac('sha1', base32(secret)).update(counter).digest();
  const at = mac[mac.length - 1] & 0x0f;
  const n = (mac.readUInt32BE(at) & 0x7fffffff) % 1_000_000;
  return String(n).padStart(6, '0');
}

const ok = (r, what) => assert.equal(r.error, null, `${what}: ${r.error}`);

async function scenarios(url, tag) {
  const auth = new AuthClient({ url, autoRefreshToken: false, persistSession: true });
  const email = `mfa-${tag}-${Date.now()}@example.com`;
  ok(await auth.signUp({ email, password: 'secret123' }), 'signUp');

  let aal = await auth.mfa.getAuthenticatorAssuranceLevel();
  ok(aal, 'aal');
  assert.deepEqual([aal.data.currentLevel, aal.data.nextLevel], ['aal1', 'aal1']);

  const enrolled = await auth.mfa.enroll({ factorType: 'totp', friendlyName: 'laptop' });
  ok(enrolled, 'enroll');
  assert.equal(enrolled.data.type, 'totp');
  assert.ok(enrolled.data.totp.qr_code.startsWith('data:image/svg+xml;utf-8,'), 'auth-js made it a data URL');
  assert.ok(enrolled.data.totp.uri.startsWith('otpauth://totp/'));
  const { id: factorId, totp: { secret } } = enrolled.data;

  // A wrong code is refused with GoTrue's code; the right one raises the session.
  const challenge = await auth.mfa.challenge({ factorId });
  ok(challenge, 'challenge');
  const wrong = await auth.mfa.verify({ factorId, challengeId: challenge.data.id, code: totp(secret, 3) });
  assert.equal(wrong.error?.code, 'mfa_verification_failed');
  ok(await auth.mfa.verify({ factorId, challengeId: challenge.data.id, code: totp(secret) }), 'verify');

  aal = await auth.mfa.getAuthenticatorAssuranceLevel();
  assert.deepEqual([aal.data.currentLevel, aal.data.nextLevel], ['aal2', 'aal2']);
  assert.deepEqual(aal.data.currentAuthenticationMethods.map((m) => m.method), ['totp', 'password']);

  const listed = await auth.mfa.listFactors();
  ok(listed, 'listFactors');
  assert.deepEqual(listed.data.totp.map((f) => f.id), [factorId]);
  assert.equal(listed.data.all[0].status, 'verified');

  // A refresh keeps aal2; a fresh sign-in is aal1 with aal2 next.
  ok(await auth.refreshSession(), 'refresh');
  aal = await auth.mfa.getAuthenticatorAssuranceLevel();
  assert.equal(aal.data.currentLevel, 'aal2');
  const second = new AuthClient({ url, autoRefreshToken: false, persistSession: true });
  ok(await second.signInWithPassword({ email, password: 'secret123' }), 'second sign-in');
  aal = await second.mfa.getAuthenticatorAssuranceLevel();
  assert.deepEqual([aal.data.currentLevel, aal.data.nextLevel], ['aal1', 'aal2']);

  // challengeAndVerify on the second session; the code of the next step,
  // since this factor's current one was used.
  ok(await second.mfa.challengeAndVerify({ factorId, code: totp(secret, 1) }), 'challengeAndVerify');
  aal = await second.mfa.getAuthenticatorAssuranceLevel();
  assert.equal(aal.data.currentLevel, 'aal2');

  // The admin sees and removes the factor; unenroll of a second one by the user.
  const admin = new GoTrueAdminApi({ url, headers: { Authorization: `Bearer ${serviceKey}`, apikey: serviceKey } });
  const userId = (await second.getUser()).data.user.id;
  const extra = await second.mfa.enroll({ factorType: 'totp', friendlyName: 'spare' });
  ok(extra, 'enroll spare');
  const removed = await second.mfa.unenroll({ factorId: extra.data.id });
  ok(removed, 'unenroll');
  const adminList = await admin.mfa.listFactors({ userId });
  ok(adminList, 'admin listFactors');
  assert.deepEqual(adminList.data.factors.map((f) => f.id), [factorId]);
  ok(await admin.mfa.deleteFactor({ userId, id: factorId }), 'admin deleteFactor');
  const after = await second.mfa.listFactors();
  ok(after, 'listFactors after');
  assert.equal(after.data.all.length, 0);
}

await runEverywhere(base, scenarios);
