// castellan as an OpenID provider, driven by openid-client (certified by the
// OpenID Foundation) as an app would drive it: discovery, the authorization
// code flow with PKCE, state and nonce through the consent endpoints for a
// signed-in user, the token exchange, the ID token checked against
// /.well-known/jwks.json, userinfo, a refresh and a revocation.
//
// node oidc.mjs <issuer> <service_role key>
import assert from 'node:assert/strict';
import * as client from 'openid-client';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [issuer, serviceKey] = process.argv.slice(2);
const REDIRECT = 'http://localhost:8976/callback';

async function call(path, { method = 'GET', token, body } = {}) {
  const res = await fetch(issuer + path, {
    method,
    redirect: 'manual',
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body ? { 'content-type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
}

async function scenario() {
  // An admin registers the app (a confidential client, HTTP Basic).
  const reg = await call('/admin/oauth/clients', {
    method: 'POST',
    token: serviceKey,
    body: { redirect_uris: [REDIRECT], client_name: 'openid-client e2e' },
  });
  assert.equal(reg.status, 201, JSON.stringify(reg.body));

  const config = await client.discovery(
    new URL(issuer),
    reg.body.client_id,
    undefined,
    client.ClientSecretBasic(reg.body.client_secret),
    { execute: [client.allowInsecureRequests] },
  );
  const meta = config.serverMetadata();
  assert.equal(meta.issuer, issuer);
  assert.ok(meta.revocation_endpoint, 'a revocation endpoint is advertised');

  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT,
    scope: 'openid email profile',
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  });

  // The browser: castellan sends it to the site's consent page.
  const first = await fetch(url, { redirect: 'manual' });
  assert.equal(first.status, 302);
  const consentPage = new URL(first.headers.get('location'));
  const authorizationId = consentPage.searchParams.get('authorization_id');
  assert.ok(authorizationId, consentPage.href);

  // The consent page, for a user who signs in there.
  const email = `oidc-${Date.now()}@example.com`;
  const signup = await call('/signup', { method: 'POST', body: { email, password: 'correct-horse-1', data: { name: 'Ada' } } });
  assert.equal(signup.status, 200, JSON.stringify(signup.body));
  const userToken = signup.body.access_token;
  const details = await call(`/oauth/authorizations/${authorizationId}`, { token: userToken });
  assert.equal(details.status, 200, JSON.stringify(details.body));
  assert.equal(details.body.client.name, 'openid-client e2e');
  const consent = await call(`/oauth/authorizations/${authorizationId}/consent`, {
    method: 'POST',
    token: userToken,
    body: { action: 'approve' },
  });
  assert.equal(consent.status, 200, JSON.stringify(consent.body));

  // Back at the app: the code exchange validates state, iss (RFC 9207),
  // PKCE and the ID token's claims (nonce, audience, issuer, times).
  const tokens = await client.authorizationCodeGrant(config, new URL(consent.body.redirect_url), {
    pkceCodeVerifier: verifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  assert.equal(claims.email, email);
  assert.equal(claims.name, 'Ada');
  assert.equal(claims.nonce, nonce);

  // The ID token's signature, by the published keys.
  const jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
  const { payload, protectedHeader } = await jwtVerify(tokens.id_token, jwks, {
    issuer,
    audience: reg.body.client_id,
  });
  assert.equal(payload.sub, claims.sub);
  assert.ok(protectedHeader.kid);
  assert.ok(payload.at_hash && payload.auth_time);

  const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  assert.equal(info.email, email);
  assert.equal(info.email_verified, true);

  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  assert.ok(refreshed.access_token && refreshed.refresh_token);
  assert.notEqual(refreshed.refresh_token, tokens.refresh_token);

  // Revoked: the session is over, its refresh token and access token with it.
  await client.tokenRevocation(config, refreshed.refresh_token);
  await assert.rejects(client.refreshTokenGrant(config, refreshed.refresh_token), (e) => {
    assert.equal(e.error, 'invalid_grant');
    return true;
  });
  const after = await call('/user', { token: refreshed.access_token });
  assert.equal(after.status, 403, JSON.stringify(after.body));

  // A replayed code is refused.
  await assert.rejects(
    client.authorizationCodeGrant(config, new URL(consent.body.redirect_url), {
      pkceCodeVerifier: verifier,
      expectedState: state,
      expectedNonce: nonce,
    }),
    (e) => {
      assert.equal(e.error, 'invalid_grant');
      return true;
    },
  );
}

try {
  await scenario();
  console.log(`ok openid-client (${issuer})`);
} catch (e) {
  console.error('FAILED openid-client:', e);
  process.exit(1);
}
