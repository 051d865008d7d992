//! The `castellan` command: `serve` (the default) and `migrate`.

use castellan_core::Config;
use castellan_core::config::DEFAULT_METRICS_ADDR;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(Parser)]
#[command(
    name = "castellan",
    version,
    about = "A self-hostable authentication server speaking the Supabase Auth (GoTrue) API",
    after_help = "Configuration comes from the environment (and a .env file), with GoTrue's names:\n  \
    DATABASE_URL         postgres://… or a SQLite file path (default ./castellan.db)\n  \
    GOTRUE_JWT_SECRET    the HS256 secret (generated beside a SQLite database when unset)\n  \
    GOTRUE_API_HOST, PORT  where to listen (default 0.0.0.0:8081)\n  \
    GOTRUE_SITE_URL, API_EXTERNAL_URL, GOTRUE_SMTP_HOST, GOTRUE_MAILER_AUTOCONFIRM, …\n\n\
    `castellan config example` lists every variable with its default;\n\
    `castellan config check` shows the effective configuration, secrets masked."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve the API and run the job workers (the default).
    Serve {
        /// Serve the API only; run the workers as `castellan worker` processes.
        #[arg(long)]
        no_workers: bool,
    },
    /// Run only the job workers (email delivery).
    Worker,
    /// Apply pending migrations and exit.
    Migrate,
    /// Operator tools for when there is no admin token yet.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The configuration: every variable castellan reads.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// JWT signing keys for GOTRUE_JWT_KEYS.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Rate limits changed while castellan runs (as PUT /admin/rate_limits).
    #[command(subcommand)]
    Limits(LimitsCommand),
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// The limits in force, as JSON.
    Show,
    /// Change limits, e.g. `token_refresh=300 otp=60`; every server sharing
    /// the database applies them within a second.
    #[command(after_help = limit_names_help())]
    Set {
        /// NAME=NUMBER, NAME one of the limits listed below.
        #[arg(required = true, value_name = "NAME=NUMBER")]
        changes: Vec<String>,
    },
}

/// The names `castellan limits set` takes, with what each guards.
fn limit_names_help() -> String {
    let mut help = String::from("Limits (NAME: what it counts; its variable):\n");
    for l in castellan_core::limits::ALL {
        if let Some(name) = l.runtime {
            help.push_str(&format!("  {name}: {}; {}\n", l.guards, l.variable));
        }
    }
    help
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new private JWK (a signing key with a random kid). Put it in
    /// GOTRUE_JWT_KEYS; to rotate, add it first with `key_ops: ["verify"]`.
    Generate {
        #[arg(long, value_enum, default_value = "ES256")]
        alg: KeyAlg,
    },
    /// Store a key in the database as verify-only (published, not signing):
    /// a new one of --alg, or the private JWK in --jwk-file. Prints its kid.
    Add {
        #[arg(long, value_enum, default_value = "ES256")]
        alg: KeyAlg,
        #[arg(long)]
        jwk_file: Option<std::path::PathBuf>,
    },
    /// Make a stored key the signing key (the current one keeps verifying).
    Promote { kid: String },
    /// Stop publishing and accepting a stored key (not the signing key).
    Retire { kid: String },
    /// The stored keys: kid, algorithm, state, when added.
    List,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyAlg {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "EdDSA")]
    EdDsa,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check the environment (and `.env`) and print the effective
    /// configuration, secrets masked; exit 1 when a value is refused.
    Check,
    /// Print a commented `.env` with every variable and its default.
    Example,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a user directly in the database.
    CreateUser {
        #[arg(long)]
        email: String,
        /// Without one the account gets a random password nobody knows.
        #[arg(long)]
        password: Option<String>,
        /// Mark the email as confirmed.
        #[arg(long)]
        confirm: bool,
    },
    /// End every session of a user, in every process sharing the database.
    SignOut {
        #[arg(long)]
        email: String,
    },
    /// Mint a JWT with the configured signing key, e.g. a `service_role` key.
    Token {
        /// The token's `role` claim: `service_role` (an admin key: the admin
        /// API, every user) or `anon` (the public key clients are given).
        #[arg(long, default_value = "service_role")]
        role: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 10 * 365 * 24 * 3600)]
        expires_in: i64,
    },
}

fn main() {
    // A `.env` file is read when present; variables already set win.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let log_writer = logging(&cli);
    let runtime = tokio::runtime::Runtime::new().expect("start the tokio runtime");
    let outcome = runtime.block_on(run(cli));
    // Tasks still running may log: they stop before the log's writer does,
    // which then has a second to write out the lines it holds.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    drop(log_writer);
    if let Err(e) = outcome {
        eprintln!("castellan: {e:#}");
        std::process::exit(1);
    }
}

/// Installs the log; for the server, the guard of the thread that writes it.
fn logging(cli: &Cli) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    // An admin command's stdout is its answer (`KEY=$(castellan admin token)`):
    // its log lines go to stderr.
    let admin = matches!(
        cli.command,
        Some(Command::Admin(_) | Command::Keys(_) | Command::Limits(_))
    );
    let (writer, terminal, guard) = if admin {
        (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            None,
        )
    } else {
        // Lines are formatted on the request's thread and written by the
        // appender's own: no request waits on a write to stdout. Not lossy:
        // when the buffer is full the request waits rather than a line vanish.
        // The buffer is allocated whole at start: 16 Ki lines (half a MiB)
        // hold half a second of the heaviest load measured here.
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(16 * 1024)
            .lossy(false)
            .thread_name("log-writer")
            .finish(std::io::stdout());
        (
            BoxMakeWriter::new(writer),
            std::io::IsTerminal::is_terminal(&std::io::stdout()),
            Some(guard),
        )
    };
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && terminal)
        .with_env_filter(
            EnvFilter::try_from_env("CASTELLAN_LOG")
                .or_else(|_| EnvFilter::try_from_env("GOTRUE_LOG_LEVEL"))
                .unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    guard
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Config(cmd)) = &cli.command {
        return config_command(cmd).await;
    }
    if let Some(Command::Keys(KeysCommand::Generate { alg })) = &cli.command {
        println!("{}", castellan_core::crypto::jwk::generate(alg.kind()));
        return Ok(());
    }
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let (settings, config) = Config::settings(&env);
    let config = config?;
    // Said once, by every command: what starts but deserves a word.
    for warning in castellan::preflight::warnings(&config, &env, &settings) {
        tracing::warn!("{warning}");
    }
    match cli.command.unwrap_or(Command::Serve { no_workers: false }) {
        Command::Migrate => {
            let store = castellan::server::open_store(&config, 2, true).await?;
            println!("migrations applied ({})", store.backend_name());
            Ok(())
        }
        Command::Admin(cmd) => admin(config, cmd).await,
        Command::Keys(cmd) => keys(config, cmd).await,
        Command::Limits(cmd) => limits(config, cmd).await,
        Command::Config(_) => unreachable!("answered before the configuration is read"),
        Command::Worker => {
            castellan::preflight::refusal(&config, castellan::preflight::Role::Worker).await?;
            let store = castellan::server::open_store(&config, 4, true).await?;
            castellan_jobs::queue::setup(&store)
                .await
                .map_err(anyhow::Error::msg)?;
            let scrape = castellan::observability::Scrape {
                handle: castellan::observability::recorder(),
                store: store.clone(),
            };
            castellan::observability::zero_series(&config);
            let metrics = match castellan::server::MetricsServer::start(&config, scrape).await {
                Ok(m) => m,
                // The API server on this host holds the default address.
                Err(e) if config.metrics_addr.as_deref() == Some(DEFAULT_METRICS_ADDR) => {
                    tracing::warn!(error = %e, "workers serve no /metrics: set CASTELLAN_METRICS_ADDR to give them an address of their own");
                    None
                }
                Err(e) => return Err(e),
            };
            let secret = castellan::server::resolve_secret(&config)?;
            let mut workers = castellan::server::Workers::spawn(store, config, &secret);
            tracing::info!("castellan workers running");
            tokio::select! {
                _ = shutdown_signal() => workers.stop().await,
                _ = workers.wait() => {}
            }
            if let Some(m) = metrics {
                m.stop().await;
            }
            Ok(())
        }
        Command::Serve { no_workers } => {
            let mut server = castellan::server::start_with(config, !no_workers).await?;
            let ended = tokio::select! {
                _ = shutdown_signal() => {
                    tracing::info!("shutting down");
                    Ok(())
                }
                ended = server.wait() => ended,
            };
            if let Err(e) = &ended {
                tracing::error!(error = %e, "stopping: this process can no longer serve as it should");
            }
            server.stop().await;
            ended
        }
    }
}

/// What an operator's command works with: the store (migrated) and the
/// services' shared context.
async fn operator_ctx(config: Config) -> anyhow::Result<std::sync::Arc<castellan_service::Ctx>> {
    let secret = castellan::server::resolve_secret(&config)?;
    let store = castellan::server::open_store(&config, 2, true).await?;
    castellan_service::Ctx::load(config, store, &secret)
        .await
        .map_err(anyhow::Error::msg)
}

/// `castellan limits show|set`.
async fn limits(config: Config, cmd: LimitsCommand) -> anyhow::Result<()> {
    use castellan_service::limit_settings;
    let ctx = operator_ctx(config).await?;
    let settings = match cmd {
        LimitsCommand::Show => limit_settings::stored(&ctx).await,
        LimitsCommand::Set { changes } => {
            let mut body = serde_json::Map::new();
            for change in changes {
                let (name, value) = change
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("{change:?}: expected NAME=NUMBER"))?;
                let value: serde_json::Value = value
                    .parse::<u64>()
                    .map(Into::into)
                    .unwrap_or_else(|_| value.into());
                body.insert(name.to_string(), value);
            }
            let actor = castellan_core::models::AuditActor::admin("castellan limits");
            match limit_settings::parse(&body) {
                Ok(parsed) => limit_settings::store(&ctx, &actor, &parsed).await,
                Err(e) => Err(e),
            }
        }
    };
    ctx.store.close().await;
    let settings = settings.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    println!(
        "{}",
        serde_json::to_string(&limit_settings::current(&settings))?
    );
    Ok(())
}

impl KeyAlg {
    fn kind(self) -> castellan_core::crypto::jwk::KeyKind {
        use castellan_core::crypto::jwk::KeyKind;
        match self {
            KeyAlg::Es256 => KeyKind::Es256,
            KeyAlg::Rs256 => KeyKind::Rs256,
            KeyAlg::EdDsa => KeyKind::EdDsa,
        }
    }
}

/// The signing keys kept in the database; every server sharing it picks a
/// change up within CASTELLAN_KEYS_POLL_INTERVAL.
async fn keys(config: Config, cmd: KeysCommand) -> anyhow::Result<()> {
    use castellan_core::store::KeyState;
    use castellan_service::signing_keys;
    let ctx = operator_ctx(config).await?;
    let actor = castellan_core::models::AuditActor::admin("castellan keys");
    let done = match cmd {
        KeysCommand::Generate { .. } => unreachable!("answered before the configuration is read"),
        KeysCommand::Add { alg, jwk_file } => {
            let jwk = match jwk_file {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
                None => castellan_core::crypto::jwk::generate(alg.kind()).to_string(),
            };
            signing_keys::add(&ctx, &actor, &jwk)
                .await
                .map(|kid| println!("{kid}"))
        }
        KeysCommand::Promote { kid } => {
            signing_keys::set_state(&ctx, &actor, &kid, KeyState::Sign).await
        }
        KeysCommand::Retire { kid } => {
            signing_keys::set_state(&ctx, &actor, &kid, KeyState::Retired).await
        }
        KeysCommand::List => signing_keys::list(&ctx).await.map(|keys| {
            if keys.is_empty() {
                eprintln!(
                    "no signing keys are stored: tokens are signed with GOTRUE_JWT_SECRET (or GOTRUE_JWT_KEYS); `castellan keys add` stores one"
                );
            }
            for k in keys {
                let added = k.created_at.to_rfc3339();
                println!("{}\t{}\t{}\t{added}", k.kid, k.alg, k.state);
            }
        }),
    };
    ctx.store.close().await;
    done.map_err(|e| anyhow::Error::msg(e.message))
}

async fn admin(config: Config, cmd: AdminCommand) -> anyhow::Result<()> {
    use castellan_core::crypto::jwt::{JwtKeys, role_claims};
    let secret = castellan::server::resolve_secret(&config)?;
    match cmd {
        AdminCommand::Token { role, expires_in } => {
            let keys = JwtKeys::new(&config.jwt, &secret).map_err(|e| anyhow::anyhow!(e))?;
            let now = chrono::Utc::now().timestamp();
            let claims = role_claims(
                &role,
                &config.jwt.aud,
                now,
                expires_in,
                config.jwt.issuer.clone(),
            );
            println!(
                "{}",
                keys.sign(&claims).map_err(|e| anyhow::anyhow!("{e}"))?
            );
            Ok(())
        }
        AdminCommand::CreateUser {
            email,
            password,
            confirm,
        } => {
            let store = castellan::server::open_store(&config, 2, true).await?;
            let aud = config.jwt.aud.clone();
            let ctx = castellan_service::Ctx::load(config, store, &secret)
                .await
                .map_err(anyhow::Error::msg)?;
            let admin = castellan_service::admin::Admin::new(ctx.clone());
            let attrs = castellan_service::admin::UserAttributes {
                email: Some(email),
                password,
                email_confirm: confirm,
                ..Default::default()
            };
            let actor = castellan_core::models::AuditActor::admin("castellan-cli");
            let (user, ids) = admin
                .create_user(&actor, attrs, &aud)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("{}", serde_json::to_string_pretty(&user.to_json(&ids))?);
            ctx.store.close().await;
            Ok(())
        }
        AdminCommand::SignOut { email } => {
            let store = castellan::server::open_store(&config, 2, true).await?;
            let aud = config.jwt.aud.clone();
            let ctx = castellan_service::Ctx::load(config, store, &secret)
                .await
                .map_err(anyhow::Error::msg)?;
            let admin = castellan_service::admin::Admin::new(ctx.clone());
            let actor = castellan_core::models::AuditActor::admin("castellan-cli");
            let ended = admin
                .sign_out(&actor, &email, &aud)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("{}", serde_json::json!({ "sessions_ended": ended }));
            ctx.store.close().await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `castellan config example|check`: the list of settings is the one the
/// configuration is read with, so it never drifts from it.
async fn config_command(cmd: &ConfigCommand) -> anyhow::Result<()> {
    let env: std::collections::HashMap<String, String> = match cmd {
        ConfigCommand::Example => Default::default(),
        ConfigCommand::Check => std::env::vars().collect(),
    };
    use std::fmt::Write as _;
    let (settings, parsed) = Config::settings(&env);
    let mut out = String::new();
    match cmd {
        ConfigCommand::Example => out = castellan::config_example::example(&settings),
        ConfigCommand::Check => {
            let secret = parsed
                .as_ref()
                .ok()
                .and_then(castellan::preflight::secret_shown);
            for s in &settings {
                let shown = match (&s.value, s.is_secret()) {
                    (Some(_), true) => "******** (set)".to_string(),
                    (Some(v), false) => castellan_core::config::mask_url_password(v),
                    (None, _) if s.names[0] == "GOTRUE_JWT_SECRET" && secret.is_some() => {
                        secret.clone().unwrap_or_default()
                    }
                    (None, _) if s.default.is_empty() => "(unset)".to_string(),
                    (None, _) => format!("{} (default)", s.default),
                };
                let _ = writeln!(out, "{}={shown}", s.names[0]);
            }
        }
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    if matches!(cmd, ConfigCommand::Check) {
        // What `serve` would refuse, then what it would warn about.
        let config = parsed?;
        castellan::preflight::refusal(&config, castellan::preflight::Role::Serve).await?;
        for warning in castellan::preflight::warnings(&config, &env, &settings) {
            eprintln!("castellan: warning: {warning}");
        }
        for (hook, cfg) in config.hooks.enabled() {
            let how = match &cfg.target {
                castellan_core::config::HookTarget::Http(_) => "HTTP, signed",
                castellan_core::config::HookTarget::PgFunction { .. } => "a PostgreSQL function",
            };
            eprintln!("castellan: hook {} is on ({how})", hook.env());
        }
        eprintln!("castellan: the configuration is valid");
    }
    Ok(())
}
