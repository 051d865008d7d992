//! The server under test: built in release mode, started as its own process,
//! observed through `/metrics` and `/proc`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

pub struct Server {
    pub child: Child,
    pub base: String,
    pub pid: u32,
}

pub const SECRET: &str = "benchmark-secret-benchmark-secret-0123";
/// The relying party passkeys are made for, and the page they are used from.
pub const PASSKEY_RP: &str = "localhost";
pub const PASSKEY_ORIGIN: &str = "http://localhost:3000";

/// Builds `castellan` in release mode: a no-op after the README's bench
/// command, which builds the same two packages in one invocation, so cargo
/// resolves one feature set for both and nothing is compiled twice.
pub fn build_release() -> anyhow::Result<std::path::PathBuf> {
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "castellan",
            "-p",
            "castellan-bench",
        ])
        .status()
        .context("cargo build --release")?;
    if !status.success() {
        bail!("building castellan in release mode failed");
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or(root.join("target"));
    Ok(target.join("release/castellan"))
}

/// Starts castellan on `database_url`; `extra` adds (or overrides) variables.
pub async fn start(
    bin: &std::path::Path,
    database_url: &str,
    smtp_port: u16,
    extra: &[(&str, &str)],
) -> anyhow::Result<Server> {
    start_as(bin, &["serve"], database_url, smtp_port, extra).await
}

/// As [`start`], with the command's arguments (`serve --no-workers`).
pub async fn start_as(
    bin: &std::path::Path,
    args: &[&str],
    database_url: &str,
    smtp_port: u16,
    extra: &[(&str, &str)],
) -> anyhow::Result<Server> {
    let huge = "1000000000";
    let mut child = Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("GOTRUE_JWT_SECRET", SECRET)
        .env("GOTRUE_MAILER_AUTOCONFIRM", "true")
        .env("GOTRUE_API_HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("NO_COLOR", "1")
        .env("CASTELLAN_LOG", "info")
        // The benchmark reads the server's counters on its API port.
        .env("CASTELLAN_METRICS_ADDR", "api")
        .env("GOTRUE_RATE_LIMIT_TOKEN_REFRESH", huge)
        .env("GOTRUE_RATE_LIMIT_OTP", huge)
        .env("GOTRUE_RATE_LIMIT_VERIFY", huge)
        .env("GOTRUE_RATE_LIMIT_ANONYMOUS_USERS", huge)
        .env("GOTRUE_RATE_LIMIT_EMAIL_SENT", huge)
        .env("GOTRUE_RATE_LIMIT_PASSKEY", huge)
        // Passkeys on, for a relying party the bench's authenticators answer as.
        .env("GOTRUE_PASSKEY_ENABLED", "true")
        .env("GOTRUE_WEBAUTHN_RP_ID", PASSKEY_RP)
        .env("GOTRUE_WEBAUTHN_RP_DISPLAY_NAME", "castellan bench")
        .env("GOTRUE_WEBAUTHN_RP_ORIGINS", PASSKEY_ORIGIN)
        // The OAuth server on, for the code flow's scenario.
        .env("GOTRUE_OAUTH_SERVER_ENABLED", "true")
        .env("GOTRUE_OAUTH_SERVER_AUTHORIZATION_PATH", "/consent")
        .env("GOTRUE_SMTP_HOST", "127.0.0.1")
        .env("GOTRUE_SMTP_PORT", smtp_port.to_string())
        .env("GOTRUE_SMTP_ADMIN_EMAIL", "bench@castellan.test")
        .env("CASTELLAN_QUEUE_POLL_INTERVAL", "50ms")
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting castellan")?;
    let pid = child.id().context("castellan pid")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("castellan listening addr=").nth(1) {
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string());
            }
        }
        bail!("castellan exited before listening")
    })
    .await
    .context("castellan did not start within 60 s")??;
    // The server's warnings and errors go to the benchmark's stderr: a run
    // whose numbers look wrong says why.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                eprintln!("server: {line}");
            }
        }
    });
    Ok(Server {
        child,
        base: format!("http://{addr}"),
        pid,
    })
}

impl Server {
    /// Resident memory now and at its peak, in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        rss_mib(self.pid)
    }

    pub fn reset_peak(&self) {
        reset_peak(self.pid)
    }

    /// The value of an unlabelled counter in `/metrics`.
    pub async fn counter(&self, http: &reqwest::Client, name: &str) -> f64 {
        let text = match http.get(format!("{}/metrics", self.base)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return 0.0,
        };
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn wait_idle(&self) {
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A process's resident memory now and at its peak, in MiB (`VmRSS`, `VmHWM`).
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets a process's peak-RSS mark (writing 5 to clear_refs), so a
/// scenario's peak is its own.
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}
