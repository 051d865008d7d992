//! What castellan refuses or warns about in a configuration, decided in one
//! place: `serve` and `worker` run it before they open the database, and
//! `castellan config check` runs the same, so a check that says "valid"
//! means the server starts (issue 33).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use castellan_core::Config;
use castellan_core::config::{DatabaseUrl, Setting};

/// What the process is about to do: a server listens, every command but
/// `config check` needs a secret to sign with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serve,
    Worker,
}

/// Why this configuration cannot run `role`, as one sentence naming the
/// variable; nothing is created, migrated or written.
pub async fn refusal(config: &Config, role: Role) -> anyhow::Result<()> {
    if role == Role::Serve {
        local("GOTRUE_API_HOST", listen_addr(config)?)?;
    }
    if let Some(at) = &config.metrics_addr {
        local("CASTELLAN_METRICS_ADDR", metrics_addr(at)?)?;
    }
    if let DatabaseUrl::Sqlite(path) = &config.database_url
        && let Some(why) = castellan_core::store::sqlite_unusable(path)
    {
        anyhow::bail!(why);
    }
    secret_source(config)?;
    if matches!(config.database_url, DatabaseUrl::Sqlite(_))
        && let Some(hook) = config.hooks.pg_functions().next()
    {
        anyhow::bail!(
            "invalid configuration: GOTRUE_HOOK_{}_URI: pg-functions:// hooks run inside PostgreSQL, and DATABASE_URL is SQLite: use an https:// hook",
            hook.env()
        );
    }
    // The keys and methods, checked with any secret: its source is above.
    let secret = config.jwt.secret.as_deref().unwrap_or(CHECK_SECRET);
    castellan_core::crypto::jwt::JwtKeys::new(&config.jwt, secret)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    if role == Role::Serve {
        // Messages are rendered where they are queued: by the API.
        castellan_jobs::templates::Templates::load(&config.mailer)
            .await
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    }
    Ok(())
}

/// Stands in for a secret not generated yet, to check the key settings.
const CHECK_SECRET: &str = "a-secret-that-only-checks-the-key-settings";

/// `addr`'s address is one of this machine's (bound on a free port, at
/// once let go).
fn local(var: &str, addr: SocketAddr) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => anyhow::bail!(
            "invalid configuration: {var}: {} is not an address of this machine",
            addr.ip()
        ),
        Err(e) => anyhow::bail!("invalid configuration: {var}: cannot listen on {addr}: {e}"),
    }
}

/// What starts but deserves a word: a short secret, variables nobody reads,
/// an SMS or OAuth provider that will refuse its sends or sign-ins.
pub fn warnings(
    config: &Config,
    env: &HashMap<String, String>,
    settings: &[Setting],
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = &config.jwt.secret
        && s.len() < 32
    {
        out.push(format!(
            "GOTRUE_JWT_SECRET is shorter than 32 bytes ({} bytes): a short HS256 secret can be guessed, and whoever guesses it can mint admin tokens; use 32 or more random bytes (openssl rand -hex 32)",
            s.len()
        ));
    }
    let gateway = castellan_jobs::sms::Gateway::from_config(&config.sms);
    out.extend(castellan_jobs::sms::warning(config, &gateway));
    out.extend(castellan_service::providers::unusable(&config.external));
    out.extend(castellan_core::unread::Unread::of(env, settings).warnings());
    out
}

/// Where the API listens. `GOTRUE_API_HOST` may name a host (`localhost`),
/// as Go's listener allows; an IPv4 address of it is preferred, as Go does.
pub fn listen_addr(config: &Config) -> anyhow::Result<SocketAddr> {
    socket_addr("GOTRUE_API_HOST/PORT", &config.host, config.port)
}

/// `CASTELLAN_METRICS_ADDR`, `HOST:PORT`.
pub fn metrics_addr(at: &str) -> anyhow::Result<SocketAddr> {
    let bad = || {
        anyhow::anyhow!(
            "invalid configuration: CASTELLAN_METRICS_ADDR: {at:?} is not HOST:PORT (like 127.0.0.1:9102), or \"api\" to serve /metrics on the API's port"
        )
    };
    let (host, port) = at.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    socket_addr("CASTELLAN_METRICS_ADDR", host, port)
}

fn socket_addr(var: &str, host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    // An IPv6 literal may come bracketed, as in a URL: a matched pair only.
    let bare = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) if inner.parse::<std::net::Ipv6Addr>().is_ok() => inner,
        _ => host,
    };
    let cannot = |why: String| {
        anyhow::anyhow!("invalid configuration: {var}: cannot listen on {host}:{port}: {why}")
    };
    let addrs: Vec<SocketAddr> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| cannot(e.to_string()))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| cannot("the name has no address".into()))
}

/// Where the JWT secret comes from when `GOTRUE_JWT_SECRET` is unset: the
/// file beside a SQLite database (made on first start). PostgreSQL
/// deployments share one secret, so they must set it.
pub fn secret_source(config: &Config) -> anyhow::Result<Option<PathBuf>> {
    if config.jwt.secret.is_some() {
        return Ok(None);
    }
    match &config.database_url {
        DatabaseUrl::Sqlite(db) => Ok(Some(PathBuf::from(format!("{db}.jwt-secret")))),
        DatabaseUrl::Postgres(_) => anyhow::bail!(
            "invalid configuration: GOTRUE_JWT_SECRET: required when DATABASE_URL is PostgreSQL (every process sharing the database signs with it; openssl rand -hex 32 makes one)"
        ),
    }
}

/// How `config check` shows an unset secret: where it will come from.
pub fn secret_shown(config: &Config) -> Option<String> {
    let path = secret_source(config).ok()??;
    Some(match path.exists() {
        true => format!(
            "(unset: the secret generated earlier, kept in {})",
            path.display()
        ),
        false => format!("(unset: serve generates one into {})", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(&env).unwrap()
    }

    #[test]
    fn a_host_name_is_listened_on_by_its_ipv4_address() {
        let c = config(&[("GOTRUE_API_HOST", "localhost"), ("PORT", "9999")]);
        assert_eq!(listen_addr(&c).unwrap(), "127.0.0.1:9999".parse().unwrap());
        let c = config(&[("GOTRUE_API_HOST", "::1"), ("PORT", "9999")]);
        assert_eq!(listen_addr(&c).unwrap(), "[::1]:9999".parse().unwrap());
        let c = config(&[("GOTRUE_API_HOST", "no such host!"), ("PORT", "9999")]);
        let e = listen_addr(&c).unwrap_err().to_string();
        assert!(
            e.contains("GOTRUE_API_HOST/PORT") && e.contains("no such host!"),
            "{e}"
        );
    }

    #[test]
    fn a_metrics_address_is_host_and_port() {
        assert_eq!(
            metrics_addr("127.0.0.1:9102").unwrap(),
            "127.0.0.1:9102".parse().unwrap()
        );
        for bad in [
            "9102",
            "127.0.0.1:http",
            "127.0.0.1:70000",
            "[127.0.0.1]:9102",
            "[::1:9102",
        ] {
            let e = metrics_addr(bad).unwrap_err().to_string();
            assert!(e.contains("CASTELLAN_METRICS_ADDR"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn postgres_needs_a_secret_and_sqlite_keeps_one_beside_it() {
        let pg = config(&[("DATABASE_URL", "postgres://u@h/db")]);
        let e = refusal(&pg, Role::Worker).await.unwrap_err().to_string();
        assert!(e.contains("GOTRUE_JWT_SECRET"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db").to_string_lossy().into_owned();
        let lite = config(&[("DATABASE_URL", db.as_str())]);
        assert!(refusal(&lite, Role::Serve).await.is_ok());
        assert!(secret_shown(&lite).unwrap().contains("serve generates one"));
        std::fs::write(format!("{db}.jwt-secret"), "x").unwrap();
        assert!(secret_shown(&lite).unwrap().contains("generated earlier"));
    }
}
