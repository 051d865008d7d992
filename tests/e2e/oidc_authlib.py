"""castellan as an OpenID provider, driven by Python's Authlib: the
authorization code flow with PKCE through the consent endpoints, the token
exchange (client_secret_post), the ID token verified against the published
keys, userinfo, a refresh and a revocation.

python oidc_authlib.py <issuer> <service_role key>
"""

import sys
import time
from urllib.parse import parse_qs, urlparse

import httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from authlib.jose import JsonWebKey, jwt
from authlib.oidc.core import CodeIDToken

issuer, service_key = sys.argv[1], sys.argv[2]
REDIRECT = "http://localhost:8976/callback"
http = httpx.Client(base_url=issuer, follow_redirects=False, timeout=30)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


reg = http.post(
    "/admin/oauth/clients",
    headers={"authorization": f"Bearer {service_key}"},
    json={
        "redirect_uris": [REDIRECT],
        "client_name": "authlib e2e",
        "token_endpoint_auth_method": "client_secret_post",
    },
)
check(reg.status_code == 201, reg.text)
client_id, client_secret = reg.json()["client_id"], reg.json()["client_secret"]
meta = http.get("/.well-known/openid-configuration").json()
check(meta["issuer"] == issuer, meta)

oauth = OAuth2Client(
    client_id,
    client_secret,
    scope="openid email phone",
    redirect_uri=REDIRECT,
    token_endpoint_auth_method="client_secret_post",
    revocation_endpoint_auth_method="client_secret_post",
    code_challenge_method="S256",
)
verifier = generate_token(48)
nonce = generate_token(20)
url, state = oauth.create_authorization_url(
    meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce
)

first = httpx.get(url, follow_redirects=False)
check(first.status_code == 302, first.text)
authorization_id = parse_qs(urlparse(first.headers["location"]).query)["authorization_id"][0]

email = f"authlib-{int(time.time() * 1000)}@example.com"
signup = http.post("/signup", json={"email": email, "password": "correct-horse-1"})
check(signup.status_code == 200, signup.text)
user = {"authorization": f"Bearer {signup.json()['access_token']}"}
details = http.get(f"/oauth/authorizations/{authorization_id}", headers=user)
check(details.status_code == 200, details.text)
consent = http.post(
    f"/oauth/authorizations/{authorization_id}/consent",
    headers=user,
    json={"action": "approve"},
)
check(consent.status_code == 200, consent.text)
back = consent.json()["redirect_url"]
query = parse_qs(urlparse(back).query)
check(query["state"][0] == state, back)
check(query["iss"][0] == issuer, back)

token = oauth.fetch_token(
    meta["token_endpoint"], authorization_response=back, code_verifier=verifier
)
keys = JsonWebKey.import_key_set(httpx.get(meta["jwks_uri"]).json())
claims = jwt.decode(
    token["id_token"],
    keys,
    claims_cls=CodeIDToken,
    claims_options={"iss": {"essential": True, "value": issuer}},
    claims_params={"nonce": nonce, "client_id": client_id, "access_token": token["access_token"]},
)
claims.validate()  # iss, aud, exp, iat, nonce, at_hash
check(claims["email"] == email, claims)
check(claims["phone_number_verified"] is False, claims)

info = oauth.get(meta["userinfo_endpoint"])
check(info.status_code == 200 and info.json()["sub"] == claims["sub"], info.text)

refreshed = oauth.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
check(refreshed["refresh_token"] != token["refresh_token"], refreshed)

revoked = oauth.revoke_token(
    meta["revocation_endpoint"], token=refreshed["refresh_token"], token_type_hint="refresh_token"
)
check(revoked.status_code == 200, revoked.text)
again = httpx.post(
    meta["token_endpoint"],
    data={
        "grant_type": "refresh_token",
        "refresh_token": refreshed["refresh_token"],
        "client_id": client_id,
        "client_secret": client_secret,
    },
)
check(again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text)
print(f"ok authlib ({issuer})")
