// supabase-js against castellan, unchanged: the client calls `${url}/auth/v1`,
// which castellan serves as well as `/`. From the repository root (where the
// server keeps its secret: the keys must be minted with it), after
// `(cd examples && npm install)`:
//   node examples/supabase-js.mjs http://localhost:8081 "$(castellan admin token --role anon)" "$(castellan admin token)"
// By default (as GoTrue) a sign-up must confirm its email before signing in;
// here the third argument, the service_role key, confirms it through the
// admin API. With GOTRUE_MAILER_AUTOCONFIRM=true it is not needed. An app
// never holds that key: its users follow the emailed link.
import { createClient } from '@supabase/supabase-js'

const [url, anonKey, serviceKey] = process.argv.slice(2)
const supabase = createClient(url, anonKey, { auth: { persistSession: false } })
const fail = (message) => { console.error(`supabase-js.mjs: ${message}`); process.exit(1) }
// A failed step says which it was, with the HTTP status and the server's message.
const step = async (name, call) => {
  const { data, error } = await call
  if (error) fail(`${name} failed: ${error.status ? `HTTP ${error.status}` : `no answer from ${url}`} ${error.code ?? ''} ${error.message}`)
  return data
}

const email = `reader-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`
const signedUp = await step('sign up', supabase.auth.signUp({ email, password: 'a-long-password' }))
if (!signedUp.session) {
  if (!serviceKey) fail('the server waits for email confirmation: pass the service_role key as the third argument, or start it with GOTRUE_MAILER_AUTOCONFIRM=true')
  const admin = createClient(url, serviceKey, { auth: { persistSession: false, autoRefreshToken: false } }).auth.admin
  await step('confirm the address (admin API)', admin.updateUserById(signedUp.user.id, { email_confirm: true }))
  console.log('confirmed', email, 'through the admin API')
}
const { session } = await step('sign in', supabase.auth.signInWithPassword({ email, password: 'a-long-password' }))
console.log('signed in as', session.user.email)

const { user } = await step('update the user', supabase.auth.updateUser({ data: { plan: 'free' } }))
console.log('plan', user.user_metadata.plan)

const refreshed = await step('refresh', supabase.auth.refreshSession())
console.log('refreshed', refreshed.session.refresh_token !== session.refresh_token)

await step('sign out', supabase.auth.signOut())
console.log('signed out')
