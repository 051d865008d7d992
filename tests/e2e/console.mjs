// The admin console in a real browser (issue 34): Debian's Chromium, driven
// by playwright-core, at <base>/console and <base>/auth/v1/console.
//   node console.mjs <base-url> <service-key> <screenshot-dir>
// An admin signs in (a user who is not one is refused), finds a user whose
// metadata is hostile markup (shown as text, never run), bans and unbans
// them, ends their session (their next refresh is refused), lowers a rate
// limit (the next request is limited), sends a dead invitation again, adds
// and promotes a signing key (new tokens carry it) and reads the health
// page; a change without the CSRF token is refused; signing out ends the
// console's session. Screenshots of each page
// go to <screenshot-dir> (not committed).
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { chromium } from 'playwright-core';
import { runEverywhere } from './harness.mjs';

const [base, serviceKey, shots] = process.argv.slice(2);
if (!shots) {
  console.error('usage: node console.mjs <base-url> <service-key> <screenshot-dir>');
  process.exit(2);
}
await mkdir(shots, { recursive: true });
const PASSWORD = 'correct-horse-9';
const HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>';

async function call(method, path, body, headers = {}) {
  const r = await fetch(base + path, {
    method,
    headers: { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}
const admin = (method, path, body) => call(method, path, body, { authorization: `Bearer ${serviceKey}` });

async function makeUser(email, extra = {}) {
  const r = await admin('POST', '/admin/users', { email, password: PASSWORD, email_confirm: true, ...extra });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

const browser = await chromium.launch({
  executablePath: process.env.CASTELLAN_TEST_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking'],
});

// Each run limits a bucket no earlier request of this client used.
const limited = {
  root: { name: 'verify', request: () => call('POST', '/verify', { type: 'signup', email: 'x@example.com', token: '000000' }) },
  prefixed: { name: 'anonymous_users', request: () => call('POST', '/signup', {}) },
};

async function scenario(url, tag) {
  await makeUser(`root-${tag}@example.com`, { role: 'supabase_admin' });
  await makeUser(`plain-${tag}@example.com`);
  const victimEmail = `victim-${tag}@example.com`;
  const victim = await makeUser(victimEmail, { user_metadata: { name: HOSTILE } });
  const signed = await call('POST', '/token?grant_type=password', { email: victimEmail, password: PASSWORD });
  assert.equal(signed.status, 200);

  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const status = page.getByRole('status');
  const signIn = async (email) => {
    await page.getByLabel('Email').fill(email);
    await page.getByLabel('Password').fill(PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
  };

  await page.goto(`${url}/console`);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await page.screenshot({ path: `${shots}/${tag}-sign-in.png` });
  // Not an admin: answered as a wrong password, in the page.
  await signIn(`plain-${tag}@example.com`);
  await status.getByText('Invalid login credentials').waitFor();
  await signIn(`root-${tag}@example.com`);
  await page.getByRole('heading', { name: 'Users' }).waitFor();
  assert.equal(await page.locator('#who').textContent(), `root-${tag}@example.com (supabase_admin)`);
  await page.screenshot({ path: `${shots}/${tag}-users.png` });

  // Invite one user and create another from the users page.
  await page.getByLabel('Invitee\'s email').fill(`invited-${tag}@example.com`);
  await page.getByRole('button', { name: 'Invite' }).click();
  await status.getByText('Invitation sent').waitFor();
  await page.getByLabel('New user\'s email').fill(`made-${tag}@example.com`);
  await page.getByRole('button', { name: 'Create' }).click();
  await page.getByRole('heading', { name: `made-${tag}@example.com` }).waitFor();
  const made = (await admin('GET', `/admin/users?filter=made-${tag}`)).body.users;
  assert.equal(made.length, 1);
  assert.ok(made[0].email_confirmed_at);
  await page.getByRole('link', { name: 'Users' }).click();
  await page.getByRole('heading', { name: 'Users' }).waitFor();

  // Find the victim, open them: the hostile name is text.
  await page.getByLabel('Email, phone, id or name contains').fill(victimEmail);
  await page.getByRole('button', { name: 'Search' }).click();
  await page.getByRole('link', { name: victimEmail }).click();
  await page.getByRole('heading', { name: victimEmail }).waitFor();
  const shown = await page.locator('dd pre').first().textContent();
  assert.ok(shown.includes('<script>window.pwned=2</script>'), shown);
  assert.equal(await page.evaluate(() => window.pwned), undefined, 'no markup from user data ran');
  assert.equal(await page.locator('main img, main script').count(), 0);
  await page.screenshot({ path: `${shots}/${tag}-user.png`, fullPage: true });

  // The user's own audit trail, on their page.
  await page.locator('#trail').getByRole('cell', { name: 'login', exact: true }).first().waitFor();

  // Metadata edited in place: a key added, the others removed.
  await page.getByLabel('User metadata (JSON)').fill('{"plan": "pro"}');
  await page.getByRole('button', { name: 'Save metadata' }).click();
  await status.getByText('Metadata saved').waitFor();
  assert.deepEqual((await admin('GET', `/admin/users/${victim.id}`)).body.user_metadata, { plan: 'pro' });

  // Ban for a day, then unban: the admin API agrees each time.
  await page.getByLabel('Ban for').selectOption('24h');
  await page.getByRole('button', { name: 'Ban', exact: true }).click();
  await page.getByText('Banned for 24h').waitFor();
  assert.ok((await admin('GET', `/admin/users/${victim.id}`)).body.banned_until);
  await page.getByRole('button', { name: 'Unban' }).click();
  await status.getByText('Unbanned').waitFor();
  assert.equal((await admin('GET', `/admin/users/${victim.id}`)).body.banned_until ?? null, null);

  // End the victim's session: their refresh token stops working.
  await page.getByRole('button', { name: /^End session / }).first().click();
  await status.getByText('Session ended').waitFor();
  const refresh = await call('POST', '/token?grant_type=refresh_token', { refresh_token: signed.body.refresh_token });
  assert.equal(refresh.status, 400, JSON.stringify(refresh.body));

  // The audit log shows it.
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.getByRole('heading', { name: 'Audit log' }).waitFor();
  await page.getByRole('cell', { name: 'logout' }).first().waitFor();
  await page.screenshot({ path: `${shots}/${tag}-audit.png`, fullPage: true });

  // Lower a limit to one request: the second is refused.
  const limit = limited[tag];
  await page.getByRole('link', { name: 'Rate limits' }).click();
  const input = page.getByLabel(limit.name, { exact: true });
  const before = await input.inputValue();
  await input.fill('1');
  await page.getByRole('button', { name: 'Save' }).click();
  await status.getByText('Rate limits saved').waitFor();
  await page.screenshot({ path: `${shots}/${tag}-limits.png` });
  assert.notEqual((await limit.request()).status, 429);
  assert.equal((await limit.request()).status, 429);
  await page.getByLabel(limit.name, { exact: true }).fill(before);
  await page.getByRole('button', { name: 'Save' }).click();
  await status.getByText('Rate limits saved').waitFor();

  // A dead invitation, sent again: the queue has one dead job fewer.
  await page.getByRole('link', { name: 'Queues' }).click();
  await page.getByRole('heading', { name: 'email: dead' }).waitFor();
  const deadBefore = (await admin('GET', '/admin/queues')).body[0].dead;
  await page.getByRole('button', { name: /^Retry job / }).first().click();
  await status.getByText('Job queued again').waitFor();
  assert.equal((await admin('GET', '/admin/queues')).body[0].dead, deadBefore - 1);
  await page.screenshot({ path: `${shots}/${tag}-queues.png`, fullPage: true });

  // A new signing key: published, then signing once promoted.
  await page.getByRole('link', { name: 'Signing keys' }).click();
  await page.getByLabel('Algorithm').selectOption('ES256');
  await page.getByRole('button', { name: 'Add a key' }).click();
  await status.getByText('Key added (verify only until promoted)').waitFor();
  const keys = (await admin('GET', '/admin/keys')).body;
  const added = keys.find((k) => k.state === 'verify');
  const jwks = await call('GET', '/.well-known/jwks.json');
  assert.ok(jwks.body.keys.some((k) => k.kid === added.kid));
  await page.getByRole('button', { name: `Promote key ${added.kid}` }).click();
  await status.getByText('Key promoted').waitFor();
  const fresh = await call('POST', '/token?grant_type=password', { email: victimEmail, password: PASSWORD });
  const header = JSON.parse(Buffer.from(fresh.body.access_token.split('.')[0], 'base64url'));
  assert.equal(header.kid, added.kid);
  await page.screenshot({ path: `${shots}/${tag}-keys.png`, fullPage: true });

  // Health: every part is up.
  await page.getByRole('link', { name: 'Health' }).click();
  await page.getByText('Ready.').waitFor();
  await page.getByRole('cell', { name: 'actors: session_manager' }).waitFor();
  await page.screenshot({ path: `${shots}/${tag}-health.png`, fullPage: true });

  // The cookie alone, without the CSRF token, changes nothing.
  const [cookie] = (await context.cookies()).filter((c) => c.name === 'castellan_console');
  assert.ok(cookie.httpOnly && cookie.sameSite === 'Strict', JSON.stringify(cookie));
  const forged = await call('PUT', `/admin/users/${victim.id}`, { ban_duration: '24h' },
    { cookie: `${cookie.name}=${cookie.value}`, 'sec-fetch-site': 'same-origin' });
  assert.equal(forged.status, 403, JSON.stringify(forged.body));
  assert.equal((await admin('GET', `/admin/users/${victim.id}`)).body.banned_until ?? null, null);

  // Signing out ends the console's session.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  const after = await call('GET', '/admin/users', undefined, { cookie: `${cookie.name}=${cookie.value}` });
  assert.equal(after.status, 403, JSON.stringify(after.body));
  assert.deepEqual(errors, []);
  await context.close();
}

await runEverywhere(base, scenario, () => browser.close());
