#!/usr/bin/env bash
# The password lifecycle and the admin API with curl and jq. Run with the
# server started with GOTRUE_MAILER_AUTOCONFIRM=true:
#   examples/curl.sh http://localhost:8081 "$(castellan admin token)"
set -euo pipefail
API=${1:-http://localhost:8081}
SERVICE_KEY=$2
json=(-H 'content-type: application/json')

# Sign up, then sign in: a session with an access and a refresh token.
curl -sf "${json[@]}" "$API/signup" -d '{"email":"alice@example.com","password":"secret123"}' >/dev/null
SESSION=$(curl -sf "${json[@]}" "$API/token?grant_type=password" \
  -d '{"email":"alice@example.com","password":"secret123"}')
ACCESS=$(jq -r .access_token <<<"$SESSION")
REFRESH=$(jq -r .refresh_token <<<"$SESSION")

# Who am I; change my metadata and password.
curl -sf "$API/user" -H "authorization: Bearer $ACCESS" | jq -r .email
curl -sf -X PUT "${json[@]}" "$API/user" -H "authorization: Bearer $ACCESS" \
  -d '{"data":{"plan":"pro"},"password":"a-new-secret"}' | jq -c .user_metadata

# A fresh access token from the refresh token (which rotates).
ACCESS=$(curl -sf "${json[@]}" "$API/token?grant_type=refresh_token" \
  -d "{\"refresh_token\":\"$REFRESH\"}" | jq -r .access_token)

# Sign out everywhere: 204, and the refresh tokens are dead.
curl -sf -o /dev/null -w '%{http_code}\n' -X POST "$API/logout?scope=global" \
  -H "authorization: Bearer $ACCESS"

# The admin API, with the service_role key: list, create, delete.
curl -sf "$API/admin/users?per_page=10" -H "authorization: Bearer $SERVICE_KEY" | jq '.users | length'
BOB=$(curl -sf "${json[@]}" "$API/admin/users" -H "authorization: Bearer $SERVICE_KEY" \
  -d '{"email":"bob@example.com","password":"secret123","email_confirm":true}' | jq -r .id)
curl -sf -o /dev/null -w '%{http_code}\n' -X DELETE "$API/admin/users/$BOB" \
  -H "authorization: Bearer $SERVICE_KEY"
