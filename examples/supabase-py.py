# supabase-py against castellan, unchanged (it calls `url/auth/v1`, which
# castellan serves). Run with the server started with
# GOTRUE_MAILER_AUTOCONFIRM=true:
#   python examples/supabase-py.py http://localhost:8081 "$(castellan admin token --role anon)"
import sys
import time

from supabase import create_client

url, anon_key = sys.argv[1], sys.argv[2]
supabase = create_client(url, anon_key)

email = f"py-reader-{int(time.time() * 1000)}@example.com"
supabase.auth.sign_up({"email": email, "password": "a-long-password"})
session = supabase.auth.sign_in_with_password({"email": email, "password": "a-long-password"}).session
print("signed in as", session.user.email)

user = supabase.auth.update_user({"data": {"plan": "free"}}).user
print("plan", user.user_metadata["plan"])

supabase.auth.sign_out()
print("signed out")
