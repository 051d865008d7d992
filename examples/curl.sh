#!/usr/bin/env bash
# The password lifecycle and the admin API with curl and jq. Works against a
# server with GoTrue's defaults (a sign-up waits for its email to be
# confirmed) as well as with GOTRUE_MAILER_AUTOCONFIRM=true. The second
# argument is the service_role key:
#   examples/curl.sh http://localhost:8081 "$(castellan admin token)"
set -euo pipefail
API=${1:-http://localhost:8081}
SERVICE_KEY=${2:?usage: examples/curl.sh URL SERVICE_ROLE_KEY}
ADMIN=(-H "authorization: Bearer $SERVICE_KEY")

# call STEP CURL-ARGS...: prints the answer's body; on an HTTP error, says
# which step failed with the status and the body, and stops.
call() {
  local step=$1 out status
  shift
  out=$(curl -sS -H 'content-type: application/json' -w '\n%{http_code}' "$@") \
    || { echo "curl.sh: $step: no answer from $API" >&2; exit 1; }
  status=${out##*$'\n'}
  out=${out%$'\n'*}
  if [ "$status" -ge 400 ]; then echo "curl.sh: $step failed: HTTP $status $out" >&2; exit 1; fi
  printf '%s\n' "$out"
}

# A new address each run, so the script can run again.
run=$(date +%Y%m%d%H%M%S)-$RANDOM
EMAIL="alice-$run@example.com"

# Sign up. With autoconfirm the answer is a session; by default it is the
# unconfirmed user, and the confirmation email goes out (to the server's log
# without SMTP). Rather than follow its link, the operator confirms the
# address with the admin API.
SIGNUP=$(call "sign up" "$API/signup" -d "{\"email\":\"$EMAIL\",\"password\":\"secret123\"}")
if [ -z "$(jq -r '.access_token // empty' <<<"$SIGNUP")" ]; then
  call "confirm the address (admin API)" -X PUT "$API/admin/users/$(jq -r .id <<<"$SIGNUP")" \
    "${ADMIN[@]}" -d '{"email_confirm":true}' >/dev/null
  echo "signed up $EMAIL, confirmed through the admin API"
else
  echo "signed up $EMAIL, confirmed at once (autoconfirm)"
fi

# Sign in: a session with an access and a refresh token.
SESSION=$(call "sign in" "$API/token?grant_type=password" \
  -d "{\"email\":\"$EMAIL\",\"password\":\"secret123\"}")
ACCESS=$(jq -r .access_token <<<"$SESSION")
REFRESH=$(jq -r .refresh_token <<<"$SESSION")

# Who am I; change my metadata and password.
# (A value is kept before it is printed: `set -e` stops at a failed
# assignment, not at a failure inside `echo "$(…)"`.)
ME=$(call "get the user" "$API/user" -H "authorization: Bearer $ACCESS" | jq -r .email)
echo "user $ME"
PLAN=$(call "update the user" -X PUT "$API/user" -H "authorization: Bearer $ACCESS" \
  -d '{"data":{"plan":"pro"},"password":"a-new-secret"}' | jq -r .user_metadata.plan)
echo "plan $PLAN"

# A fresh access token from the refresh token (which rotates).
ACCESS=$(call "refresh" "$API/token?grant_type=refresh_token" \
  -d "{\"refresh_token\":\"$REFRESH\"}" | jq -r .access_token)
echo "refreshed"

# Sign out everywhere (204): the refresh tokens are dead.
call "sign out" -X POST "$API/logout?scope=global" -H "authorization: Bearer $ACCESS" >/dev/null
echo "signed out everywhere"

# The admin API, with the service_role key: list, create, delete.
LISTED=$(call "list users" "$API/admin/users?per_page=10" "${ADMIN[@]}" | jq '.users | length')
echo "admin: listed $LISTED users"
BOB="bob-$run@example.com"
BOB_ID=$(call "create a user" "$API/admin/users" "${ADMIN[@]}" \
  -d "{\"email\":\"$BOB\",\"password\":\"secret123\",\"email_confirm\":true}" | jq -r .id)
call "delete the user" -X DELETE "$API/admin/users/$BOB_ID" "${ADMIN[@]}" >/dev/null
echo "admin: created and deleted $BOB"
