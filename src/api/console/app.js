// The castellan console: a page of the admin API. Everything it shows is
// put in the page as text (textContent, never HTML), so no user's data can
// become markup. The session is an HttpOnly cookie; the CSRF token it
// derives is held here, in memory only, and sent with every change.

const base = location.pathname.replace(/\/console$/, '');
const main = document.getElementById('main');
const status = document.getElementById('status');
let csrf = null;
// Which view is current: a page whose data arrives after the operator has
// moved on is not shown over the page they moved to.
let shown = 0;

function show(view, ...nodes) {
  if (view === shown) main.replaceChildren(...nodes);
}

/** A section of the current user page, or null once the page is gone. */
function section(id) {
  return document.getElementById(id);
}

/** An element: attributes (on* keys are listeners) and children (text or nodes). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function say(text, error = false) {
  status.textContent = text;
  status.classList.toggle('error', error);
}

/** A call to the admin API (or the console's session) with the cookie. */
async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (csrf && method !== 'GET') headers['x-csrf-token'] = csrf;
  const r = await fetch(base + path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (r.status === 401) {
    csrf = null;
    signInPage();
  }
  if (!r.ok) throw new Error((data && (data.msg || data.message)) || `HTTP ${r.status}`);
  return { data, headers: r.headers };
}

/** Runs an action, then `after` (the page shown again), and says how it went. */
async function act(what, fn, after) {
  const view = shown;
  try {
    await fn();
    // Shown again only if the operator is still on the page it was for.
    if (after && view === shown) await after();
    say(what);
    return true;
  } catch (e) {
    say(`${what} failed: ${e.message}`, true);
    return false;
  }
}

function when(t) {
  return t ? new Date(t).toLocaleString() : '—';
}

function table(columns, rows) {
  return h('table', {},
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((cell) => h('td', {}, cell))))));
}

function signInPage() {
  document.getElementById('nav').hidden = true;
  const email = h('input', { type: 'email', name: 'email', required: true, autocomplete: 'username' });
  const password = h('input', { type: 'password', name: 'password', required: true, autocomplete: 'current-password' });
  const form = h('form', { 'aria-label': 'Sign in' },
    h('label', {}, 'Email', email),
    h('label', {}, 'Password', password),
    h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let pending = null;
    const ok = await act('Signed in', async () => {
      const { data } = await api('POST', '/console/session', { email: email.value, password: password.value });
      csrf = data.csrf;
      if (data.mfa.length) pending = data;
      else signedIn(data.user);
    });
    if (ok && pending) secondFactorPage(pending);
    else if (ok) route();
  });
  shown += 1;
  main.replaceChildren(h('h2', {}, 'Sign in'), form);
  email.focus();
}

/** An admin with a verified factor: the code of a TOTP factor opens the console. */
function secondFactorPage(signed) {
  const totp = signed.mfa.filter((f) => f.factor_type === 'totp');
  if (!totp.length) {
    say('This account\'s second factors are not TOTP apps; the console needs one.', true);
    return;
  }
  const factor = h('select', { name: 'factor' }, totp.map((f) => h('option', { value: f.id }, f.friendly_name || f.id)));
  const code = h('input', { name: 'code', inputmode: 'numeric', autocomplete: 'one-time-code', required: true });
  const form = h('form', { 'aria-label': 'Second factor' },
    h('label', {}, 'Factor', factor), h('label', {}, 'Code', code), h('button', { type: 'submit' }, 'Verify'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const ok = await act('Signed in', async () => {
      const { data } = await api('POST', '/console/session/mfa', { factor_id: factor.value, code: code.value });
      csrf = data.csrf;
      signedIn(data.user);
    });
    if (ok) route();
  });
  shown += 1;
  main.replaceChildren(h('h2', {}, 'Second factor'), form);
  code.focus();
}

function signedIn(user) {
  document.getElementById('nav').hidden = false;
  document.getElementById('who').textContent = `${user.email || ''} (${user.role})`;
}

async function usersPage(query) {
  const view = shown;
  const filter = query.get('filter') || '';
  const page = Number(query.get('page') || 1);
  const search = h('input', { type: 'search', name: 'filter', value: filter });
  const form = h('form', { role: 'search' },
    h('label', {}, 'Email, phone, id or name contains', search),
    h('button', { type: 'submit' }, 'Search'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    location.hash = `#/users?filter=${encodeURIComponent(search.value)}`;
  });
  const q = new URLSearchParams({ page, per_page: 25 });
  if (filter) q.set('filter', filter);
  const { data, headers } = await api('GET', `/admin/users?${q}`);
  const total = Number(headers.get('x-total-count') || 0);
  const rows = data.users.map((u) => [
    h('a', { href: `#/user/${u.id}` }, u.email || u.phone || u.id),
    u.phone || '',
    when(u.created_at),
    when(u.last_sign_in_at),
    u.banned_until ? `until ${when(u.banned_until)}` : '',
  ]);
  const pager = h('p', {}, `${total} users, page ${page}. `,
    page > 1 ? h('a', { href: `#/users?filter=${encodeURIComponent(filter)}&page=${page - 1}` }, 'Previous') : null,
    ' ',
    page * 25 < total ? h('a', { href: `#/users?filter=${encodeURIComponent(filter)}&page=${page + 1}` }, 'Next') : null);
  show(view, h('h2', {}, 'Users'), form,
    table(['User', 'Phone', 'Created', 'Last sign-in', 'Banned'], rows), pager,
    h('section', {}, h('h3', {}, 'Create a user'), createForm()),
    h('section', {}, h('h3', {}, 'Invite a user'), inviteForm()));
}

function createForm() {
  const email = h('input', { type: 'email', name: 'new-email', required: true });
  const password = h('input', { type: 'password', name: 'new-password', autocomplete: 'new-password' });
  const confirmed = h('input', { type: 'checkbox', name: 'confirmed', checked: true });
  const form = h('form', { 'aria-label': 'Create a user' },
    h('label', {}, 'New user\'s email', email),
    h('label', {}, 'Password (optional)', password),
    h('label', {}, 'Email confirmed', confirmed),
    h('button', { type: 'submit' }, 'Create'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { email: email.value, email_confirm: confirmed.checked };
    if (password.value) body.password = password.value;
    let made = null;
    if (await act('User created', async () => { made = (await api('POST', '/admin/users', body)).data; })) location.hash = `#/user/${made.id}`;
  });
  return form;
}

function inviteForm() {
  const email = h('input', { type: 'email', name: 'invite-email', required: true });
  const form = h('form', { 'aria-label': 'Invite a user' },
    h('label', {}, 'Invitee\'s email', email), h('button', { type: 'submit' }, 'Invite'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await act('Invitation sent', () => api('POST', '/invite', { email: email.value }));
  });
  return form;
}

async function userPage(id) {
  const view = shown;
  const { data: u } = await api('GET', `/admin/users/${id}`);
  const again = () => userPage(id);
  const duration = h('select', { name: 'ban_duration' },
    ['1h', '24h', '168h', '876000h'].map((d) => h('option', { value: d }, d)));
  const ban = h('form', { 'aria-label': 'Ban' },
    h('label', {}, 'Ban for', duration),
    h('button', { type: 'submit' }, 'Ban'),
    h('button', {
      type: 'button',
      onclick: async () => { await act('Unbanned', () => api('PUT', `/admin/users/${id}`, { ban_duration: 'none' }), again); },
    }, 'Unban'));
  ban.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await act(`Banned for ${duration.value}`, () => api('PUT', `/admin/users/${id}`, { ban_duration: duration.value }), again);
  });
  const remove = (soft) => async () => {
    if (!confirm(soft ? 'Soft-delete this user?' : 'Delete this user for good?')) return;
    if (await act('Deleted', () => api('DELETE', `/admin/users/${id}`, { should_soft_delete: soft }))) location.hash = '#/users';
  };
  const recover = async () => {
    await act('Recovery link sent', () => api('POST', '/recover', { email: u.email }));
  };
  const details = h('dl', {},
    h('dt', {}, 'Id'), h('dd', {}, u.id),
    h('dt', {}, 'Email'), h('dd', {}, u.email || '—'),
    h('dt', {}, 'Phone'), h('dd', {}, u.phone || '—'),
    h('dt', {}, 'Role'), h('dd', {}, u.role || '—'),
    h('dt', {}, 'Banned until'), h('dd', {}, when(u.banned_until)),
    h('dt', {}, 'User metadata'), h('dd', {}, h('pre', {}, JSON.stringify(u.user_metadata || {}, null, 2))),
    h('dt', {}, 'App metadata'), h('dd', {}, h('pre', {}, JSON.stringify(u.app_metadata || {}, null, 2))));
  show(view,
    h('h2', {}, u.email || u.phone || u.id), details, ban,
    h('p', {},
      u.email ? h('button', { type: 'button', onclick: recover }, 'Send a recovery link') : null, ' ',
      h('button', { type: 'button', class: 'danger', onclick: remove(true) }, 'Soft-delete'), ' ',
      h('button', { type: 'button', class: 'danger', onclick: remove(false) }, 'Delete')),
    h('section', {}, h('h3', {}, 'Metadata'), metadataForm(u, again)),
    h('section', { id: 'sessions' }, h('h3', {}, 'Sessions')),
    h('section', { id: 'factors' }, h('h3', {}, 'Factors')),
    h('section', { id: 'passkeys' }, h('h3', {}, 'Passkeys')),
    h('section', { id: 'trail' }, h('h3', {}, 'Audit trail')),
    h('section', { id: 'identities' }, h('h3', {}, 'Identities'),
      table(['Provider', 'Email', 'Created'], (u.identities || []).map((i) => [i.provider, i.email || '', when(i.created_at)]))));
  await Promise.all([sessionsOf(id, again), factorsOf(id, again), passkeysOf(id, again), trailOf(id)]);
}

/** The user's and the app's metadata as JSON; a key removed in the editor is removed (merge with null). */
function metadataForm(u, again) {
  const editor = (name, value) => h('textarea', { name, rows: 6, cols: 60, spellcheck: false }, JSON.stringify(value || {}, null, 2));
  const user = editor('user_metadata', u.user_metadata);
  const app = editor('app_metadata', u.app_metadata);
  const form = h('form', { 'aria-label': 'Metadata' },
    h('label', {}, 'User metadata (JSON)', user), h('label', {}, 'App metadata (JSON)', app),
    h('button', { type: 'submit' }, 'Save metadata'));
  const changes = (before, text) => {
    const after = JSON.parse(text);
    if (!after || typeof after !== 'object' || Array.isArray(after)) throw new Error('metadata must be a JSON object');
    for (const k of Object.keys(before || {})) if (!(k in after)) after[k] = null;
    return after;
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await act('Metadata saved', () => api('PUT', `/admin/users/${u.id}`, {
      user_metadata: changes(u.user_metadata, user.value),
      app_metadata: changes(u.app_metadata, app.value),
    }), again);
  });
  return form;
}

async function passkeysOf(id, again) {
  const { data } = await api('GET', `/admin/users/${id}/passkeys`);
  const drop = (pid) => async () => {
    await act('Passkey deleted', () => api('DELETE', `/admin/users/${id}/passkeys/${pid}`), again);
  };
  const rows = data.map((p) => [p.friendly_name || p.id, when(p.created_at), when(p.last_used_at),
    h('button', { type: 'button', onclick: drop(p.id), 'aria-label': `Delete passkey ${p.id}` }, 'Delete')]);
  section('passkeys')?.append(rows.length ? table(['Passkey', 'Created', 'Last used', ''], rows) : h('p', {}, 'No passkeys.'));
}

async function trailOf(id) {
  const { data } = await api('GET', `/admin/audit?user=${id}&per_page=20`);
  section('trail')?.append(auditTable(data),
    h('a', { href: `#/audit?user=${id}` }, 'All of it'));
}

function auditTable(entries) {
  return table(['When', 'Action', 'Actor', 'Address', 'Details'], entries.map((e) => {
    const p = e.payload || {};
    return [when(e.created_at), p.action || '', p.actor_username || p.actor_id || '', e.ip_address || '',
      h('pre', {}, JSON.stringify(p.traits || {}))];
  }));
}

async function sessionsOf(id, again) {
  const { data } = await api('GET', `/admin/users/${id}/sessions`);
  const end = (sid) => async () => {
    await act('Session ended', () => api('DELETE', `/admin/users/${id}/sessions/${sid}`), again);
  };
  const rows = data.map((s) => [s.id, when(s.created_at), s.aal || '', s.ip || '', s.user_agent || '',
    h('button', { type: 'button', onclick: end(s.id), 'aria-label': `End session ${s.id}` }, 'End')]);
  section('sessions')?.append(
    table(['Session', 'Started', 'Level', 'Address', 'Agent', ''], rows),
    data.length ? h('button', {
      type: 'button',
      onclick: async () => { await act('All sessions ended', () => api('DELETE', `/admin/users/${id}/sessions`), again); },
    }, 'End all sessions') : h('p', {}, 'No sessions.'));
}

async function factorsOf(id, again) {
  const { data } = await api('GET', `/admin/users/${id}/factors`);
  const drop = (fid) => async () => {
    await act('Factor removed', () => api('DELETE', `/admin/users/${id}/factors/${fid}`), again);
  };
  const rows = data.map((f) => [f.friendly_name || f.id, f.factor_type, f.status, when(f.created_at),
    h('button', { type: 'button', onclick: drop(f.id), 'aria-label': `Remove factor ${f.id}` }, 'Remove')]);
  section('factors')?.append(rows.length ? table(['Factor', 'Type', 'Status', 'Created', ''], rows) : h('p', {}, 'No factors.'));
}

async function auditPage(query) {
  const view = shown;
  const scope = h('select', { name: 'scope' }, ['action', 'author', 'type'].map((s) => h('option', { value: s, selected: query.get('scope') === s }, s)));
  const text = h('input', { type: 'search', name: 'text', value: query.get('text') || '' });
  const user = h('input', { name: 'user', value: query.get('user') || '', placeholder: 'a user id' });
  const ip = h('input', { name: 'ip', value: query.get('ip') || '' });
  const since = h('input', { type: 'datetime-local', name: 'since', value: query.get('since') || '' });
  const until = h('input', { type: 'datetime-local', name: 'until', value: query.get('until') || '' });
  const form = h('form', { role: 'search' },
    h('label', {}, 'Field', scope), h('label', {}, 'Contains', text), h('label', {}, 'User', user),
    h('label', {}, 'Address contains', ip), h('label', {}, 'From', since), h('label', {}, 'To', until),
    h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const input of [scope, text, user, ip, since, until]) if (input.value) q.set(input.name, input.value);
    location.hash = `#/audit?${q}`;
  });
  const q = new URLSearchParams({ per_page: 50 });
  if (query.get('text')) q.set('query', `${query.get('scope') || 'action'}:${query.get('text')}`);
  if (query.get('user')) q.set('user', query.get('user'));
  if (query.get('ip')) q.set('ip', query.get('ip'));
  // The page's local times, sent as UTC.
  if (query.get('since')) q.set('since', new Date(query.get('since')).toISOString());
  if (query.get('until')) q.set('until', new Date(query.get('until')).toISOString());
  const { data } = await api('GET', `/admin/audit?${q}`);
  show(view, h('h2', {}, 'Audit log'), form, auditTable(data));
}

async function limitsPage() {
  const view = shown;
  const { data } = await api('GET', '/admin/rate_limits');
  const inputs = Object.entries(data).map(([name, value]) =>
    h('label', {}, name, h('input', { type: 'number', min: 0, step: 1, name, value })));
  const form = h('form', { 'aria-label': 'Rate limits' }, inputs, h('button', { type: 'submit' }, 'Save'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const changed = {};
    for (const input of form.querySelectorAll('input')) {
      if (Number(input.value) !== data[input.name]) changed[input.name] = Number(input.value);
    }
    await act('Rate limits saved', () => api('PUT', '/admin/rate_limits', changed), limitsPage);
  });
  const { data: usage } = await api('GET', '/admin/rate_limits/usage');
  show(view, h('h2', {}, 'Rate limits'),
    h('p', {}, 'Requests allowed per window, per client; a change holds in every process at once.'), form,
    h('h3', {}, 'In use'),
    h('p', {}, 'Clients each bucket holds in the process that answered (a bucket lives until it is full again).'),
    table(['Bucket', 'Clients'], Object.entries(usage).map(([bucket, n]) => [bucket, String(n)])));
}

async function queuesPage(query) {
  const view = shown;
  const { data } = await api('GET', '/admin/queues');
  const counts = table(['Queue', 'Pending', 'Retrying', 'Dead'], data.map((q) => [
    q.queue, q.pending, q.retrying,
    h('a', { href: `#/queues?queue=${q.queue}&state=dead` }, String(q.dead))]));
  const queue = ['email', 'sms'].includes(query.get('queue')) ? query.get('queue') : 'email';
  const state = ['pending', 'retrying', 'dead'].includes(query.get('state')) ? query.get('state') : 'dead';
  const pick = h('p', {}, ['email', 'sms'].flatMap((q) => ['pending', 'retrying', 'dead'].map((st) =>
    h('a', { href: `#/queues?queue=${q}&state=${st}`, 'aria-current': q === queue && st === state ? 'page' : null }, `${q} ${st}`)))
    .flatMap((a) => [a, ' ']));
  const { data: jobs } = await api('GET', `/admin/queues/${queue}/jobs?state=${state}`);
  const settle = (id, retry) => async () => {
    const path = `/admin/queues/${queue}/jobs/${encodeURIComponent(id)}`;
    const again = () => queuesPage(query);
    if (retry) await act('Job queued again', () => api('POST', `${path}/retry`), again);
    else await act('Job discarded', () => api('DELETE', path), again);
  };
  const rows = jobs.map((j) => [j.id, j.status, `${j.attempts} of ${j.max_attempts}`, when(j.run_at * 1000),
    h('pre', {}, j.last_result || ''),
    state === 'dead' ? h('span', {},
      h('button', { type: 'button', onclick: settle(j.id, true), 'aria-label': `Retry job ${j.id}` }, 'Retry'), ' ',
      h('button', { type: 'button', class: 'danger', onclick: settle(j.id, false), 'aria-label': `Discard job ${j.id}` }, 'Discard')) : '']);
  show(view, h('h2', {}, 'Queues'), counts, pick,
    h('h3', {}, `${queue}: ${state}`),
    rows.length ? table(['Job', 'Status', 'Attempts', 'Runs at', 'Last result', ''], rows) : h('p', {}, 'None.'));
}

async function keysPage() {
  const view = shown;
  const { data } = await api('GET', '/admin/keys');
  const change = (kid, what) => async () => {
    await act(`Key ${what === 'promote' ? 'promoted' : 'retired'}`, () => api('POST', `/admin/keys/${encodeURIComponent(kid)}/${what}`), keysPage);
  };
  const rows = data.map((k) => [k.kid, k.alg, k.state, when(k.created_at),
    k.state === 'verify' ? h('span', {},
      h('button', { type: 'button', onclick: change(k.kid, 'promote'), 'aria-label': `Promote key ${k.kid}` }, 'Promote'), ' ',
      h('button', { type: 'button', class: 'danger', onclick: change(k.kid, 'retire'), 'aria-label': `Retire key ${k.kid}` }, 'Retire')) : '']);
  const alg = h('select', { name: 'alg' }, ['ES256', 'RS256', 'EdDSA'].map((a) => h('option', { value: a }, a)));
  const form = h('form', { 'aria-label': 'Add a key' }, h('label', {}, 'Algorithm', alg), h('button', { type: 'submit' }, 'Add a key'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await act('Key added (verify only until promoted)', () => api('POST', '/admin/keys', { alg: alg.value }), keysPage);
  });
  show(view, h('h2', {}, 'Signing keys'),
    h('p', {}, 'Keys kept in the database. A new key is published first and signs once promoted; wait for caches of the JWKS before promoting, and for the access-token lifetime before retiring the old one.'),
    rows.length ? table(['Kid', 'Algorithm', 'State', 'Added', ''], rows) : h('p', {}, 'No stored keys: tokens are signed by the configured secret or keys.'),
    form);
}

async function healthPage() {
  const view = shown;
  const r = await fetch(`${base}/ready`, { headers: { accept: 'application/json' } });
  const data = await r.json();
  const rows = Object.entries(data).flatMap(([k, v]) => {
    if (Array.isArray(v)) return [[k, v.join(', ') || 'nothing']];
    if (v && typeof v === 'object') return Object.entries(v).map(([name, state]) => [`${k}: ${name}`, String(state)]);
    return [[k, String(v)]];
  });
  show(view, h('h2', {}, 'Health'),
    h('p', {}, r.ok ? 'Ready.' : 'Not ready.'), table(['Part', 'State'], rows));
}

async function route() {
  if (!csrf) return;
  shown += 1;
  const [path, qs] = (location.hash.slice(1) || '/users').split('?');
  const query = new URLSearchParams(qs || '');
  const user = path.match(/^\/user\/([0-9a-f-]{36})$/);
  try {
    if (user) await userPage(user[1]);
    else if (path === '/audit') await auditPage(query);
    else if (path === '/limits') await limitsPage();
    else if (path === '/queues') await queuesPage(query);
    else if (path === '/keys') await keysPage();
    else if (path === '/health') await healthPage();
    else await usersPage(query);
  } catch (e) {
    if (csrf) say(e.message, true);
  }
}

document.getElementById('sign-out').addEventListener('click', async () => {
  await act('Signed out', () => api('DELETE', '/console/session'));
  csrf = null;
  signInPage();
});
window.addEventListener('hashchange', route);

(async () => {
  try {
    const { data } = await api('GET', '/console/session');
    csrf = data.csrf;
    signedIn(data.user);
    route();
  } catch {
    signInPage();
  }
})();
