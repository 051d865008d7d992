// Asymmetric signing keys through the official client and an independent
// verifier: node keys.mjs <base-url>, with CASTELLAN_KEY_ALG (ES256, RS256
// or EdDSA) naming the server's signing key.
import assert from 'node:assert/strict';
import { createPublicKey, verify } from 'node:crypto';
import { runEverywhere } from './harness.mjs';
import { AuthClient } from '@supabase/auth-js';

const base = process.argv[2];
const alg = process.env.CASTELLAN_KEY_ALG;
if (!base || !alg) {
  console.error('usage: CASTELLAN_KEY_ALG=ES256|RS256|EdDSA node keys.mjs <base-url>');
  process.exit(2);
}

const part = (jwt, i) => JSON.parse(Buffer.from(jwt.split('.')[i], 'base64url'));

// Node's own crypto (OpenSSL), not the server's library, checks the
// signature against the published key.
function verifiedByJwks(jwt, jwks) {
  const [h, p, sig] = jwt.split('.');
  const jwk = jwks.keys.find((k) => k.kid === part(jwt, 0).kid);
  assert.ok(jwk, 'the signing key is published');
  const key = createPublicKey({ key: jwk, format: 'jwk' });
  const digest = alg === 'EdDSA' ? null : 'sha256';
  const options = alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key;
  return verify(digest, Buffer.from(`${h}.${p}`), options, Buffer.from(sig, 'base64url'));
}

async function scenarios(url, tag) {
  const auth = new AuthClient({ url, autoRefreshToken: false, persistSession: true });
  const email = `keys-${tag}-${Date.now()}@example.com`;
  const su = await auth.signUp({ email, password: 'secret123' });
  assert.equal(su.error, null, String(su.error));
  const token = su.data.session.access_token;
  assert.equal(part(token, 0).alg, alg);

  const jwks = await (await fetch(`${url}/.well-known/jwks.json`)).json();
  assert.ok(verifiedByJwks(token, jwks), 'the signature verifies against the JWKS');
  const [h, , sig] = token.split('.');
  const tampered = `${h}.${Buffer.from(JSON.stringify({ ...part(token, 1), role: 'service_role' })).toString('base64url')}.${sig}`;
  assert.ok(!verifiedByJwks(tampered, jwks), 'a changed payload does not');

  // A full session on this key: the user, a refresh, and sign-out.
  const gu = await auth.getUser();
  assert.equal(gu.error, null, String(gu.error));
  const rs = await auth.refreshSession();
  assert.equal(rs.error, null, String(rs.error));
  assert.equal(part(rs.data.session.access_token, 0).alg, alg);
  if (alg !== 'EdDSA') {
    // getClaims() verifies ES256 and RS256 itself through the JWKS (WebCrypto);
    // auth-js has no EdDSA there.
    const gc = await auth.getClaims();
    assert.equal(gc.error, null, String(gc.error));
    assert.equal(gc.data.claims.sub, su.data.user.id);
    assert.equal(gc.data.header.alg, alg);
    assert.ok(auth.jwks.keys.some((k) => k.kid === gc.data.header.kid), 'checked locally, from the fetched JWKS');
  }
  const so = await auth.signOut();
  assert.equal(so.error, null, String(so.error));
  // auth-js reports the 403 `session_not_found` as a missing session.
  const after = await new AuthClient({ url, autoRefreshToken: false, persistSession: false })
    .getUser(rs.data.session.access_token);
  assert.ok(after.error, 'the session is over');
  const raw = await fetch(`${url}/user`, { headers: { Authorization: `Bearer ${rs.data.session.access_token}` } });
  assert.equal(raw.status, 403);
  assert.equal((await raw.json()).error_code, 'session_not_found');
}

await runEverywhere(base, scenarios);
