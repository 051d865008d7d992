// supabase-js against castellan, unchanged: the client calls `${url}/auth/v1`,
// which castellan serves as well as `/`. Run with the server started with
// GOTRUE_MAILER_AUTOCONFIRM=true (or confirm the email from the log first):
//   node examples/supabase-js.mjs http://localhost:8081 "$(castellan admin token --role anon)"
import { createClient } from '@supabase/supabase-js'

const [url, anonKey] = process.argv.slice(2)
const supabase = createClient(url, anonKey, { auth: { persistSession: false } })
const check = ({ data, error }) => { if (error) throw error; return data }

const email = `reader-${Date.now()}@example.com`
check(await supabase.auth.signUp({ email, password: 'a-long-password' }))
const { session } = check(await supabase.auth.signInWithPassword({ email, password: 'a-long-password' }))
console.log('signed in as', session.user.email)

const { user } = check(await supabase.auth.updateUser({ data: { plan: 'free' } }))
console.log('metadata', JSON.stringify(user.user_metadata))

const refreshed = check(await supabase.auth.refreshSession())
console.log('refreshed', refreshed.session.refresh_token !== session.refresh_token)

check(await supabase.auth.signOut())
console.log('signed out')
