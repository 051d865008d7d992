// CAPTCHA, leaked passwords and Web3 sign-in through the official client:
//   node bots.mjs <base-url> <captcha-issue-url> <leaked-password> <wallets-url>
// The server checks CAPTCHA tokens with a stand-in provider that issues a
// token per POST to <captcha-issue-url> (a solved challenge), and passwords
// with a stand-in Have I Been Pwned that lists <leaked-password>. Two
// wallets (Solana, Ethereum) sign at <wallets-url>/<chain>/sign; auth-js
// writes the messages and asks them through the wallet interfaces.
import assert from 'node:assert/strict';
import { runEverywhere } from './harness.mjs';
import { AuthClient, isAuthApiError, isAuthWeakPasswordError } from '@supabase/auth-js';

const [base, issueUrl, leaked, wallets] = process.argv.slice(2);
if (!wallets) {
  console.error('usage: node bots.mjs <base-url> <captcha-issue-url> <leaked-password> <wallets-url>');
  process.exit(2);
}

const solved = async () => (await fetch(issueUrl, { method: 'POST' })).text();

const walletAddress = async (chain) => (await fetch(`${wallets}/${chain}/address`)).text();
const walletSign = async (chain, message) =>
  (await fetch(`${wallets}/${chain}/sign`, { method: 'POST', body: message })).text();

// A Solana wallet as dApps see one: a public key and signMessage.
async function solanaWallet() {
  const address = await walletAddress('solana');
  return {
    publicKey: { toBase58: () => address },
    signMessage: async (bytes) =>
      new Uint8Array(Buffer.from(await walletSign('solana', new TextDecoder().decode(bytes)), 'base64')),
  };
}

// An EIP-1193 provider: accounts, chain id, personal_sign.
async function ethereumWallet() {
  const address = await walletAddress('ethereum');
  return {
    request: async ({ method, params }) => {
      switch (method) {
        case 'eth_requestAccounts':
        case 'eth_accounts':
          return [address];
        case 'eth_chainId':
          return '0x1';
        case 'personal_sign':
          return walletSign('ethereum', Buffer.from(params[0].slice(2), 'hex').toString('utf8'));
        default:
          throw new Error(`unexpected wallet call ${method}`);
      }
    },
  };
}

async function scenarios(url, tag) {
  const auth = new AuthClient({ url, autoRefreshToken: false, persistSession: false });
  const email = `bots-${tag}-${Date.now()}@example.com`;
  const password = 'correct-horse-battery-9';

  // No token: refused with GoTrue's code.
  let r = await auth.signUp({ email, password });
  assert.ok(isAuthApiError(r.error), `${r.error}`);
  assert.equal(r.error.code, 'captcha_failed');
  assert.equal(r.error.status, 400);

  // A solved challenge's token: signed up (autoconfirm: a session).
  r = await auth.signUp({ email, password, options: { captchaToken: await solved() } });
  assert.equal(r.error, null, `${r.error}`);
  assert.ok(r.data.session?.access_token);

  // Password sign-in asks for one too.
  r = await auth.signInWithPassword({ email, password });
  assert.equal(r.error?.code, 'captcha_failed');
  r = await auth.signInWithPassword({ email, password, options: { captchaToken: await solved() } });
  assert.equal(r.error, null, `${r.error}`);

  // A leaked password is a weak one, reason `pwned`.
  r = await auth.signUp({
    email: `pwned-${tag}-${Date.now()}@example.com`,
    password: leaked,
    options: { captchaToken: await solved() },
  });
  assert.ok(isAuthWeakPasswordError(r.error), `${r.error}`);
  assert.deepEqual(r.error.reasons, ['pwned']);

  // Wallets: auth-js writes the Sign-In With Solana / Ethereum message for
  // the app's URL, the wallet signs it, castellan signs the wallet in.
  for (const [chain, wallet] of [['solana', await solanaWallet()], ['ethereum', await ethereumWallet()]]) {
    const options = { url: 'http://localhost:3000/', captchaToken: await solved() };
    r = await auth.signInWithWeb3({ chain, wallet, statement: `Sign in (${tag})`, options });
    assert.equal(r.error, null, `${chain}: ${r.error}`);
    const identity = r.data.user.identities[0];
    assert.equal(identity.provider, 'web3');
    assert.ok(identity.identity_data.sub.startsWith(`web3:${chain}:`), identity.identity_data.sub);
    assert.equal(r.data.user.app_metadata.provider, 'web3');
  }
}

await runEverywhere(base, scenarios);
