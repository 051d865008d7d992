//! Sign-In With Solana and Sign-In With Ethereum (EIP-4361) messages as
//! GoTrue reads them: the grammar, and the wallet's signature over the
//! message (ed25519 for Solana, secp256k1 recovery over EIP-191's
//! personal-sign hash for Ethereum). Pure functions: the sign-in's rules
//! (domain, URI, time window, replay) are the service's.

use chrono::{DateTime, Utc};
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use sha3::{Digest, Keccak256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    Solana,
    Ethereum,
}

impl Chain {
    pub fn name(self) -> &'static str {
        match self {
            Chain::Solana => "solana",
            Chain::Ethereum => "ethereum",
        }
    }

    /// As GoTrue's messages and errors name it.
    pub fn title(self) -> &'static str {
        match self {
            Chain::Solana => "Solana",
            Chain::Ethereum => "Ethereum",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Chain::Solana => "siws",
            Chain::Ethereum => "siwe",
        }
    }
}

/// A parsed message: what the rules look at.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedMessage {
    pub domain: String,
    pub address: String,
    pub statement: Option<String>,
    pub uri: url::Url,
    pub chain_id: String,
    pub nonce: String,
    pub issued_at: DateTime<Utc>,
    pub expiration_time: Option<DateTime<Utc>>,
    pub not_before: Option<DateTime<Utc>>,
}

/// Parses a message; the error is GoTrue's sentence (`siws: …`).
pub fn parse(chain: Chain, message: &str) -> Result<SignedMessage, String> {
    let tag = chain.tag();
    let err = |what: &str| format!("{tag}: {what}");
    let lines: Vec<&str> = message.split('\n').collect();
    if lines.len() < 6 {
        return Err(err("message needs at least 6 lines"));
    }
    let header = format!(" wants you to sign in with your {} account:", chain.title());
    let domain = lines[0]
        .strip_suffix(header.as_str())
        .ok_or_else(|| err(&format!("message first line does not end in {header:?}")))?
        .trim();
    if !valid_domain(domain) {
        return Err(err("domain in first line of message is not valid"));
    }
    let address = lines[1].trim();
    check_address(chain, address).map_err(err)?;
    if !lines[2].is_empty() {
        return Err(err("third line must be empty"));
    }
    let (statement, first) = match (lines[3], lines[4]) {
        (s, "") if !s.is_empty() => (Some(s.to_string()), 5),
        _ => (None, 3),
    };
    let fields = fields(chain, &lines[first..], first)?;
    if fields.version != "1" {
        return Err(err(&format!(
            "Version value is not supported, expected 1 got {:?}",
            fields.version
        )));
    }
    let issued_at = fields
        .issued_at
        .ok_or_else(|| err("Issued At is not specified"))?;
    let uri = fields.uri.ok_or_else(|| err("URI is not specified"))?;
    if let Some(exp) = fields.expiration_time {
        if issued_at > exp {
            return Err(err("Issued At is after Expiration Time"));
        }
        if fields.not_before.is_some_and(|nb| nb > exp) {
            return Err(err("Not Before is after Expiration Time"));
        }
    }
    Ok(SignedMessage {
        domain: domain.to_string(),
        address: address.to_string(),
        statement,
        uri,
        chain_id: fields.chain_id,
        nonce: fields.nonce,
        issued_at,
        expiration_time: fields.expiration_time,
        not_before: fields.not_before,
    })
}

#[derive(Default)]
struct Fields {
    uri: Option<url::Url>,
    version: String,
    chain_id: String,
    nonce: String,
    issued_at: Option<DateTime<Utc>>,
    expiration_time: Option<DateTime<Utc>>,
    not_before: Option<DateTime<Utc>>,
}

/// The `Key: value` lines after the statement, in any order; `Resources:`
/// lists `- URI` lines.
fn fields(chain: Chain, lines: &[&str], offset: usize) -> Result<Fields, String> {
    let tag = chain.tag();
    let err = |what: String| format!("{tag}: {what}");
    let mut f = Fields::default();
    let mut resources: Option<usize> = None;
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(n) = resources.as_mut() {
            if let Some(r) = line.strip_prefix("- ") {
                if url::Url::parse(r).is_err() && !r.starts_with('/') {
                    return Err(err(format!("Resource at position {n} has invalid URI")));
                }
                *n += 1;
                continue;
            }
            resources = None;
        }
        if line == "Resources:" {
            resources = Some(0);
            continue;
        }
        let (key, value) = line.split_once(':').ok_or_else(|| {
            err(format!(
                "encountered unparsable line at index {}",
                i + offset
            ))
        })?;
        let value = value.trim();
        let time = |what: &str| {
            DateTime::parse_from_rfc3339(value)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| err(format!("{what} is not a valid ISO8601 timestamp")))
        };
        match key {
            "URI" => {
                f.uri = Some(url::Url::parse(value).map_err(|_| err("URI is not valid".into()))?)
            }
            "Version" => f.version = value.to_string(),
            "Chain ID" => {
                if !valid_chain_id(chain, value) {
                    return Err(err("Chain ID is not valid".into()));
                }
                f.chain_id = value.to_string();
            }
            "Nonce" => f.nonce = value.to_string(),
            "Issued At" => f.issued_at = Some(time("Issued At")?),
            "Expiration Time" => f.expiration_time = Some(time("Expiration Time")?),
            "Not Before" => f.not_before = Some(time("Not Before")?),
            _ => {}
        }
    }
    Ok(f)
}

fn valid_chain_id(chain: Chain, v: &str) -> bool {
    match chain {
        Chain::Solana => {
            v.is_empty()
                || ["mainnet", "devnet", "testnet", "localnet"]
                    .iter()
                    .any(|n| v.strip_prefix("solana:") == Some(n))
        }
        Chain::Ethereum => v.parse::<u64>().is_ok_and(|n| n > 0),
    }
}

/// `localhost` or a DNS name (labels of letters, digits and inner
/// hyphens, a top-level label of letters), with an optional port.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if host == "localhost" {
        return true;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let top = labels.last().copied().unwrap_or_default();
    labels.len() >= 2
        && labels.iter().all(|l| label_ok(l))
        && top.len() >= 2
        && top.bytes().all(|b| b.is_ascii_alphabetic())
}

fn check_address(chain: Chain, a: &str) -> Result<(), &'static str> {
    match chain {
        Chain::Solana => match bs58::decode(a).into_vec() {
            // A 32-byte ed25519 key (GoTrue checks the shape only, then
            // fails later on a key of another length).
            Ok(k) if k.len() == 32 && (32..=44).contains(&a.len()) => Ok(()),
            _ => Err("wallet address is not in base58 format"),
        },
        Chain::Ethereum => {
            let hex = a.strip_prefix("0x").unwrap_or_default();
            match hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                true => Ok(()),
                false => Err("wallet address is not a valid Ethereum address"),
            }
        }
    }
}

/// Whether the Solana wallet at `address` signed `message` (its bytes, or
/// the off-chain message envelope Ledger devices sign).
pub fn solana_signed(address: &str, domain: &str, message: &str, signature: &[u8]) -> bool {
    let Ok(key) = bs58::decode(address).into_vec() else {
        return false;
    };
    let (Ok(key), Ok(sig)) = (<[u8; 32]>::try_from(key), <[u8; 64]>::try_from(signature)) else {
        return false;
    };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&key) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    if key.verify_strict(message.as_bytes(), &sig).is_ok() {
        return true;
    }
    offchain_envelope(key.as_bytes(), domain, message)
        .is_some_and(|env| key.verify_strict(&env, &sig).is_ok())
}

/// Solana's off-chain message format, version 0, one signer.
fn offchain_envelope(key: &[u8; 32], domain: &str, message: &str) -> Option<Vec<u8>> {
    let len = u16::try_from(message.len()).ok()?;
    let mut env = b"\xffsolana offchain".to_vec();
    env.push(0); // version
    let mut app = [0u8; 32];
    let d = domain.as_bytes();
    app[..d.len().min(32)].copy_from_slice(&d[..d.len().min(32)]);
    env.extend_from_slice(&app);
    env.push(0); // format: restricted ASCII
    env.push(1); // signers
    env.extend_from_slice(key);
    env.extend_from_slice(&len.to_le_bytes());
    env.extend_from_slice(message.as_bytes());
    Some(env)
}

/// Whether the Ethereum account `address` signed `message` with
/// `personal_sign` (65 bytes r‖s‖v, v 27/28 or 0/1; high-s refused).
pub fn ethereum_signed(address: &str, message: &str, signature: &[u8]) -> bool {
    let Ok(sig) = <[u8; 65]>::try_from(signature) else {
        return false;
    };
    let v = match sig[64] {
        v @ (27 | 28) => v - 27,
        v @ (0 | 1) => v,
        _ => return false,
    };
    let (Ok(s), Some(id)) = (Signature::from_slice(&sig[..64]), RecoveryId::from_byte(v)) else {
        return false;
    };
    let hash = personal_sign_hash(message);
    let Ok(key) = VerifyingKey::recover_from_prehash(&hash, &s, id) else {
        return false;
    };
    eth_address(&key).eq_ignore_ascii_case(address)
}

/// An Ethereum address in EIP-55's mixed case (what wallets and auth-js
/// write): one spelling per account, whatever case it was given in.
pub fn eip55(address: &str) -> String {
    let lower = address.trim_start_matches("0x").to_ascii_lowercase();
    let hash = Keccak256::digest(lower.as_bytes());
    let mixed: String = lower
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0xf;
            if nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    format!("0x{mixed}")
}

/// EIP-191: Keccak-256 of "\x19Ethereum Signed Message:\n" + length + message.
pub fn personal_sign_hash(message: &str) -> [u8; 32] {
    let mut h = Keccak256::new();
    h.update(format!("\x19Ethereum Signed Message:\n{}", message.len()).as_bytes());
    h.update(message.as_bytes());
    h.finalize().into()
}

/// `0x` and the last 20 bytes of the Keccak-256 of the uncompressed key.
pub fn eth_address(key: &VerifyingKey) -> String {
    let point = key.to_encoded_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    let hex: String = hash[12..].iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        let s = s.trim_start_matches("0x");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // GoTrue's own test vectors (internal/api/web3_test.go).
    const SOLANA: &str = "supabase.com wants you to sign in with your Solana account:\n2EZEiBdw47VHT6SpZSW9VnuSvBe7DxuYHBTxj19gxvv8\n\nStatement\n\nURI: https://supabase.com/\nVersion: 1\nIssued At: 2025-03-29T00:00:00Z";
    const SOLANA_SIG: &str =
        "BQxBJ+g2xbMh0LqwYR4ULJ4l7jXFmz33urmp534MS0x7nrGRe2xYdFq41FiGrySX6RipzGqX4kS2vkQmi/+JCg==";
    const LEDGER: &str = "supabase.com wants you to sign in with your Solana account:\nEqzxWVyBpLD34SV9w1FFpPPvbfrfAXdiDVg1cyHTR1Rv\n\nI confirm ownership of this wallet\n\nVersion: 1\nURI: https://supabase.com/\nIssued At: 2025-07-29T22:29:52.235Z";
    const LEDGER_SIG: &str =
        "9slc0BBJw16TzWYs4/op8na3vt9E0CKt0FL5pqhzTDxvqF/txpbdo+ULDCeSzrDE/uJWmpMQw+hF0rkDj4Q0Bw==";
    const ETH: &str = "supabase.com wants you to sign in with your Ethereum account:\n0xD1FfC6bdfacf333C2B08F88f2f50ddcD87eaCa57\n\nStatement\n\nURI: https://supabase.com/\nVersion: 1\nIssued At: 2025-03-29T00:00:00Z";
    const ETH_SIG: &str = "0xd8dad96466536aca351702766ce1ca321317ef1e7c355b2cf19a166828f78854197ae34e3cdff0a6be1e6317f654ef458623433f14ed55f79f183e7a56c458f51b";
    const ETH_NEWLINE: &str = "localhost:5173 wants you to sign in with your Ethereum account:\n0x57c039062a750c7fe197b20E12406dB4f7d8833B\n\nSign in on localhost\n\nURI: http://localhost:5173/\nVersion: 1\nIssued At: 2025-05-16T14:52:03.613Z\n";
    const ETH_NEWLINE_SIG: &str = "0x0ca657558a144c88d768acb48e31f92bae195d3c7feb4496bd43ad6211ff904e733a0ccc29ed96da5b9f941b2a6b4363f7551d40d3fedb9b239819301c5c42731b";

    #[test]
    fn gotrues_solana_vectors_verify() {
        let m = parse(Chain::Solana, SOLANA).unwrap();
        assert_eq!(m.domain, "supabase.com");
        assert_eq!(m.statement.as_deref(), Some("Statement"));
        assert_eq!(m.uri.as_str(), "https://supabase.com/");
        assert!(solana_signed(
            &m.address,
            &m.domain,
            SOLANA,
            &b64(SOLANA_SIG)
        ));
        let l = parse(Chain::Solana, LEDGER).unwrap();
        assert!(solana_signed(
            &l.address,
            &l.domain,
            LEDGER,
            &b64(LEDGER_SIG)
        ));
        // Another message, or another wallet's signature: no.
        assert!(!solana_signed(
            &m.address,
            &m.domain,
            LEDGER,
            &b64(SOLANA_SIG)
        ));
        assert!(!solana_signed(
            &l.address,
            &l.domain,
            LEDGER,
            &b64(SOLANA_SIG)
        ));
    }

    #[test]
    fn eip55_spells_an_address_one_way() {
        // EIP-55's own examples.
        for a in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        ] {
            assert_eq!(eip55(a), a);
            assert_eq!(eip55(&a.to_lowercase()), a);
            assert_eq!(eip55(&a.to_uppercase().replace("0X", "0x")), a);
        }
    }

    #[test]
    fn gotrues_ethereum_vectors_verify() {
        let m = parse(Chain::Ethereum, ETH).unwrap();
        assert!(ethereum_signed(&m.address, ETH, &hex(ETH_SIG)));
        let n = parse(Chain::Ethereum, ETH_NEWLINE).unwrap();
        assert_eq!(n.domain, "localhost:5173");
        assert!(ethereum_signed(
            &n.address,
            ETH_NEWLINE,
            &hex(ETH_NEWLINE_SIG)
        ));
        assert!(!ethereum_signed(
            &m.address,
            ETH_NEWLINE,
            &hex(ETH_NEWLINE_SIG)
        ));
        // v as 0/1 is the same signature; any other v is not.
        let mut sig = hex(ETH_SIG);
        sig[64] -= 27;
        assert!(ethereum_signed(&m.address, ETH, &sig));
        sig[64] = 5;
        assert!(!ethereum_signed(&m.address, ETH, &sig));
    }

    #[test]
    fn malformed_messages_say_why_in_gotrues_words() {
        let cases = [
            ("short\n\n", "siws: message needs at least 6 lines"),
            (
                "a wants you to sign in with your Ethereum account:\nx\n\nURI: https://a.co\nVersion: 1\nIssued At: 2025-01-01T00:00:00Z",
                "siws: message first line does not end in \" wants you to sign in with your Solana account:\"",
            ),
            (
                "127.0.0.1 wants you to sign in with your Solana account:\n2EZEiBdw47VHT6SpZSW9VnuSvBe7DxuYHBTxj19gxvv8\n\nURI: https://a.co\nVersion: 1\nIssued At: 2025-01-01T00:00:00Z",
                "siws: domain in first line of message is not valid",
            ),
            (
                "a.co wants you to sign in with your Solana account:\n0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl\n\nURI: https://a.co\nVersion: 1\nIssued At: 2025-01-01T00:00:00Z",
                "siws: wallet address is not in base58 format",
            ),
            (
                "a.co wants you to sign in with your Solana account:\n2EZEiBdw47VHT6SpZSW9VnuSvBe7DxuYHBTxj19gxvv8\n\nURI: https://a.co\nVersion: 2\nIssued At: 2025-01-01T00:00:00Z",
                "siws: Version value is not supported, expected 1 got \"2\"",
            ),
            (
                "a.co wants you to sign in with your Solana account:\n2EZEiBdw47VHT6SpZSW9VnuSvBe7DxuYHBTxj19gxvv8\n\nURI: https://a.co\nVersion: 1\nChain ID: solana:foonet\nIssued At: 2025-01-01T00:00:00Z",
                "siws: Chain ID is not valid",
            ),
            (
                "a.co wants you to sign in with your Solana account:\n2EZEiBdw47VHT6SpZSW9VnuSvBe7DxuYHBTxj19gxvv8\n\nURI: https://a.co\nVersion: 1\nIssued At: yesterday",
                "siws: Issued At is not a valid ISO8601 timestamp",
            ),
            (
                "a.co wants you to sign in with your Solana account:\n2EZEiBdw47VHT6SpZSW9VnuSvBe7DxuYHBTxj19gxvv8\n\nURI: https://a.co\nVersion: 1\nno colon here",
                "siws: encountered unparsable line at index 5",
            ),
        ];
        for (message, says) in cases {
            assert_eq!(
                parse(Chain::Solana, message).unwrap_err(),
                says,
                "{message}"
            );
        }
    }

    #[test]
    fn a_freshly_made_ethereum_key_signs_what_it_claims() {
        let sk = k256::ecdsa::SigningKey::random(&mut rand_core_06::OsRng);
        let address = eth_address(sk.verifying_key());
        let msg = format!(
            "a.co wants you to sign in with your Ethereum account:\n{address}\n\nURI: https://a.co\nVersion: 1\nChain ID: 1\nIssued At: 2025-01-01T00:00:00Z"
        );
        let (sig, id) = sk
            .sign_prehash_recoverable(&personal_sign_hash(&msg))
            .unwrap();
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(27 + id.to_byte());
        assert!(ethereum_signed(&address, &msg, &bytes));
        assert!(ethereum_signed(
            &address.to_uppercase().replace("0X", "0x"),
            &msg,
            &bytes
        ));
        // The same r and s with the other half of the curve (high s): refused.
        let high = Signature::from_scalars(sig.r(), -*sig.s()).unwrap();
        let mut bytes = high.to_bytes().to_vec();
        bytes.push(27 + (id.to_byte() ^ 1));
        assert!(!ethereum_signed(&address, &msg, &bytes));
    }
}
