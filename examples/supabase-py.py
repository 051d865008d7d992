# supabase-py against castellan, unchanged (it calls `url/auth/v1`, which
# castellan serves). With supabase-py installed (pip install -r
# examples/requirements.txt, in a virtual environment), from the repository
# root (where the server keeps its secret: the keys must be minted with it):
#   python examples/supabase-py.py http://localhost:8081 "$(castellan admin token --role anon)" "$(castellan admin token)"
# By default (as GoTrue) a sign-up must confirm its email before signing in;
# here the third argument, the service_role key, confirms it through the
# admin API. With GOTRUE_MAILER_AUTOCONFIRM=true it is not needed. An app
# never holds that key: its users follow the emailed link.
import random
import sys
import time

from supabase import create_client
from supabase_auth.errors import AuthError

if len(sys.argv) < 3:
    sys.exit("usage: supabase-py.py URL ANON_KEY [SERVICE_ROLE_KEY]")
url, anon_key = sys.argv[1], sys.argv[2]
service_key = sys.argv[3] if len(sys.argv) > 3 else None
supabase = create_client(url, anon_key)


def step(name, call):
    """A failed step says which it was, with the HTTP status and the server's message."""
    try:
        return call()
    except AuthError as e:
        status = getattr(e, "status", None)
        where = f"HTTP {status}" if status else f"no answer from {url}"
        sys.exit(f"supabase-py.py: {name} failed: {where} {e.code or ''} {e.message}")


email = f"py-reader-{int(time.time() * 1000)}-{random.randrange(10**6)}@example.com"
signed_up = step("sign up", lambda: supabase.auth.sign_up({"email": email, "password": "a-long-password"}))
if signed_up.session is None:
    if not service_key:
        sys.exit(
            "supabase-py.py: the server waits for email confirmation: pass the service_role key"
            " as the third argument, or start it with GOTRUE_MAILER_AUTOCONFIRM=true"
        )
    admin = create_client(url, service_key).auth.admin
    step(
        "confirm the address (admin API)",
        lambda: admin.update_user_by_id(signed_up.user.id, {"email_confirm": True}),
    )
    print("confirmed", email, "through the admin API")
password = {"email": email, "password": "a-long-password"}
session = step("sign in", lambda: supabase.auth.sign_in_with_password(password)).session
print("signed in as", session.user.email)

user = step("update the user", lambda: supabase.auth.update_user({"data": {"plan": "free"}})).user
print("plan", user.user_metadata["plan"])

step("sign out", lambda: supabase.auth.sign_out())
print("signed out")
