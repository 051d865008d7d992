//! Building and running the server: store, actors, router, listener.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use castellan_core::{ApiError, Config, Store};
use castellan_service::accounts::Accounts;
use castellan_service::admin::Admin;
use castellan_service::links::Links;
use castellan_service::{Actors, Ctx};
use tokio::sync::oneshot;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::HttpError;
use crate::{api, edge, observability};

pub const BODY_LIMIT: usize = 1024 * 1024;

/// What handlers hold: configuration, services and actors; never the store.
/// One pointer, so the clone every extractor and middleware makes is one
/// atomic increment rather than one per service.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub config: Arc<Config>,
    pub accounts: Accounts,
    pub links: Links,
    pub admin: Admin,
    pub factors: castellan_service::factors::Factors,
    pub passkeys: castellan_service::passkeys::Passkeys,
    /// The OAuth server's clients.
    pub oauth_clients: castellan_service::oauth_clients::OAuthClients,
    /// The OAuth server's flow, tokens and grants.
    pub oauth_server: castellan_service::oauth_server::OAuthServer,
    /// External sign-in (OAuth providers).
    pub external: castellan_service::external::External,
    pub actors: Actors,
    pub metrics: observability::Scrape,
    /// The job workers' task when this process runs them (`GET /ready`).
    pub workers: Option<tokio::task::AbortHandle>,
    /// CAPTCHA checks, when CAPTCHA protection is on.
    pub captcha: Option<castellan_service::captcha::Captcha>,
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    pub store: Store,
    /// Where `/metrics` is served when it has an address of its own.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Vec<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    metrics_server: Option<MetricsServer>,
    workers: Option<Workers>,
}

/// `/metrics` on an address of its own (`CASTELLAN_METRICS_ADDR`).
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Listens when the configuration gives an address; `None` otherwise.
    pub async fn start(
        config: &Config,
        scrape: observability::Scrape,
    ) -> anyhow::Result<Option<MetricsServer>> {
        match Self::bind(config).await? {
            Some(l) => Self::serve(l, config, scrape).map(Some),
            None => Ok(None),
        }
    }

    /// The address `/metrics` will be served on, bound.
    pub async fn bind(config: &Config) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        let Some(at) = &config.metrics_addr else {
            return Ok(None);
        };
        let addr = crate::preflight::metrics_addr(at)?;
        bind("CASTELLAN_METRICS_ADDR", addr).await.map(Some)
    }

    pub fn serve(
        l: tokio::net::TcpListener,
        config: &Config,
        scrape: observability::Scrape,
    ) -> anyhow::Result<MetricsServer> {
        let addr = l.local_addr()?;
        let app = observability::metrics_router(scrape);
        let (stop, rx) = oneshot::channel::<()>();
        let stopped = async {
            let _ = rx.await;
        };
        tracing::info!(%addr, "metrics listening");
        let limits = config.listen.clone();
        let proxies = config.trusted_proxies.clone();
        let task = tokio::spawn(crate::listener::serve(l, app, limits, proxies, stopped));
        Ok(MetricsServer { addr, stop, task })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Binds `addr`, saying which variable names it and why it cannot be had.
async fn bind(var: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use std::io::ErrorKind;
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            ErrorKind::AddrInUse => "another process is listening there".to_string(),
            ErrorKind::PermissionDenied => {
                "not permitted (ports below 1024 need privileges)".to_string()
            }
            ErrorKind::AddrNotAvailable => "the address is not one of this machine's".into(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("cannot listen on {addr} ({var}): {why}")
    })
}

/// The job workers running beside the API (unless `--no-workers`).
pub struct Workers {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Workers {
    /// Starts the email workers on the store until `stop` is called;
    /// `secret` (the resolved JWT secret) opens the sealed jobs.
    pub fn spawn(store: Store, config: Config, secret: &str) -> Workers {
        let seal = castellan_core::crypto::at_rest::JobSeal::from_secret(secret);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let signal = async move {
                let _ = rx.await;
            };
            if let Err(e) = castellan_jobs::worker::run(store, &config, seal, signal).await {
                tracing::error!(error = %e, "job workers stopped");
            }
        });
        Workers {
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(15), &mut self.task).await;
    }

    /// Resolves when the workers stop on their own.
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Server {
    /// Stops accepting, finishes in-flight requests, stops the actors.
    pub async fn stop(mut self) {
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
        // `wait` may have seen the listener end already.
        if !self.task.is_finished() {
            let _ = (&mut self.task).await;
        }
        if let Some(m) = self.metrics_server.take() {
            m.stop().await;
        }
        if let Some(w) = self.workers.take() {
            w.stop().await;
        }
        self.state.actors.shutdown().await;
        self.store.close().await;
    }

    /// Resolves when the server stops on its own: its listener ended, or
    /// its actor supervisor gave up (`Err`, with why: the process should
    /// exit non-zero for its orchestrator to restart it).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        tokio::select! {
            _ = &mut self.task => Ok(()),
            why = self.state.actors.stopped() => Err(anyhow::anyhow!("the actors stopped: {why}")),
        }
    }
}

/// Connects to the configured database (and migrates it when `migrate`),
/// explaining a failure in words that name `DATABASE_URL` and the fix.
pub async fn open_store(config: &Config, max: u32, migrate: bool) -> anyhow::Result<Store> {
    let url = &config.database_url;
    let store = Store::connect(url, max)
        .await
        .map_err(|e| anyhow::anyhow!(castellan_core::store::explain_open_error(url, &e)))?;
    if migrate {
        store
            .migrate()
            .await
            .context("applying the database migrations")?;
    }
    Ok(store)
}

/// The JWT secret: configured, or for the embedded SQLite default one that
/// is generated once and kept beside the database file.
pub fn resolve_secret(cfg: &Config) -> anyhow::Result<String> {
    // A short one is accepted, as GoTrue does (existing keys must keep
    // working); `preflight::warnings` says so.
    let Some(path) = crate::preflight::secret_source(cfg)? else {
        return Ok(cfg.jwt.secret.clone().unwrap_or_default());
    };
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            // Every command reads it: said only when asked for.
            tracing::debug!(path = %path.display(), "using the JWT secret generated earlier (set GOTRUE_JWT_SECRET to choose one)");
            return Ok(s);
        }
    }
    let secret = castellan_core::crypto::random_base32(48);
    write_private(&path, &secret)
        .with_context(|| format!("writing the generated JWT secret to {}", path.display()))?;
    tracing::warn!(path = %path.display(), "GOTRUE_JWT_SECRET is not set: generated a secret and stored it beside the database");
    Ok(secret)
}

fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(content.as_bytes())
}

pub fn router(state: AppState) -> Router {
    let (api, doc) = api::routes(state.clone());
    let doc = doc.to_json().expect("the OpenAPI document serializes");
    let api = api.route("/openapi.json", get(move || openapi(doc.clone())));
    let mut router = Router::new().merge(api.clone()).nest("/auth/v1", api);
    if state.config.metrics_addr.is_none() {
        router = router.route("/metrics", get(observability::metrics_endpoint));
    }
    let edge = tower::ServiceBuilder::new()
        .layer(cors())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::edge,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    // One layer holding the whole edge: each `Router::layer` call boxes every
    // route once more, at an allocation and a clone per request.
    router
        .fallback(|| async { HttpError(ApiError::not_found("not_found", "Not found")) })
        .method_not_allowed_fallback(|| async {
            HttpError(ApiError::new(
                405,
                "method_not_allowed",
                "Method not allowed",
            ))
        })
        .layer(edge)
        .with_state(state)
}

fn cors() -> CorsLayer {
    let h = |s: &'static str| HeaderName::from_static(s);
    CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            h("accept"),
            h("authorization"),
            h("content-type"),
            h("x-client-ip"),
            h("x-client-info"),
            h("x-jwt-aud"),
            h("x-use-cookie"),
            h("x-supabase-api-version"),
            h("apikey"),
        ])
        .expose_headers([h("x-total-count"), h("link"), h("x-supabase-api-version")])
        .allow_credentials(true)
        .allow_origin(AllowOrigin::mirror_request())
}

/// The OpenAPI document of every route (a castellan extension).
async fn openapi(doc: String) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc,
    )
        .into_response()
}

/// Opens the store (migrating it), starts the actors and serves on
/// `GOTRUE_API_HOST:PORT` (port 0 picks a free one).
pub async fn start(config: Config) -> anyhow::Result<Server> {
    start_with(config, true).await
}

/// As `start`; `workers` also runs the job workers in this process.
pub async fn start_with(config: Config, workers: bool) -> anyhow::Result<Server> {
    let metrics = observability::recorder();
    observability::zero_series(&config);
    crate::preflight::refusal(&config, crate::preflight::Role::Serve).await?;
    // The ports first: a taken one is said before anything else is done.
    let addr = crate::preflight::listen_addr(&config)?;
    let listener = bind("GOTRUE_API_HOST/PORT", addr).await?;
    let metrics_listener = MetricsServer::bind(&config).await?;
    let secret = resolve_secret(&config)?;
    let store = open_store(&config, 16, true).await?;
    castellan_jobs::queue::setup(&store)
        .await
        .map_err(anyhow::Error::msg)?;
    tracing::info!(backend = store.backend_name(), "database ready");
    let workers = workers.then(|| Workers::spawn(store.clone(), config.clone(), &secret));
    let ctx = Ctx::load(config, store, &secret)
        .await
        .map_err(anyhow::Error::msg)
        .context("preparing the services")?;
    // The signing keys kept in the database, installed before the first
    // request and followed from then on.
    let (keys_tx, keys_rx) = oneshot::channel::<()>();
    castellan_service::signing_keys::follow(ctx.clone(), async {
        let _ = keys_rx.await;
    })
    .await;
    let actors = castellan_service::start(ctx.clone())
        .await
        .context("starting the actors")?;
    // Rate limits changed while running, applied before the first request
    // (the `RateLimiter` follows them from then on).
    castellan_service::limit_settings::apply_stored(&ctx, &actors)
        .await
        .context("reading the stored rate limits")?;
    let scrape = observability::Scrape {
        handle: metrics,
        store: ctx.store.clone(),
    };
    let abort = workers.as_ref().map(|w| w.task.abort_handle());
    let state = services(&ctx, actors, scrape, abort)?;
    let state = AppState(Arc::new(state));
    let store = ctx.store.clone();
    let addr = listener.local_addr()?;
    let app = router(state.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let limits = state.config.listen.clone();
    let task = tokio::spawn(crate::listener::serve(
        listener,
        app,
        limits.clone(),
        state.config.trusted_proxies.clone(),
        async {
            let _ = rx.await;
        },
    ));
    let shutdown = vec![tx, keys_tx];
    let metrics_server = metrics_listener
        .map(|l| MetricsServer::serve(l, &state.config, state.metrics.clone()))
        .transpose()?;
    tracing::info!(%addr, "castellan listening");
    Ok(Server {
        addr,
        state,
        store,
        metrics_addr: metrics_server.as_ref().map(|m| m.addr),
        shutdown,
        task,
        metrics_server,
        workers,
    })
}

/// The services handlers call, over the running actors.
fn services(
    ctx: &Arc<Ctx>,
    actors: castellan_service::Actors,
    metrics: observability::Scrape,
    workers: Option<tokio::task::AbortHandle>,
) -> anyhow::Result<Services> {
    let accounts = Accounts::new(ctx.clone(), actors.sessions.clone(), actors.otp.clone());
    Ok(Services {
        config: Arc::new(ctx.config.clone()),
        links: Links::new(accounts.clone(), actors.otp.clone()),
        accounts,
        admin: Admin::with_otp(ctx.clone(), actors.otp.clone()),
        factors: castellan_service::factors::Factors::new(
            ctx.clone(),
            actors.rate_limits.clone(),
            actors.otp.budgets(),
        ),
        passkeys: castellan_service::passkeys::Passkeys::new(ctx.clone(), actors.sessions.clone()),
        oauth_clients: castellan_service::oauth_clients::OAuthClients::new(ctx.clone()),
        oauth_server: castellan_service::oauth_server::OAuthServer::new(
            ctx.clone(),
            actors.sessions.clone(),
            actors.refresh.clone(),
        ),
        external: castellan_service::external::External::new(
            ctx.clone(),
            castellan_service::providers::ProviderBroker::new(
                &ctx.config.external,
                std::time::Duration::from_secs(10),
                actors.broker_slot(),
                ctx.config.clock.clone(),
            )
            .map_err(|e| anyhow::anyhow!(e))?,
            actors.sessions.clone(),
            actors.otp.clone(),
        ),
        captcha: ctx
            .config
            .captcha
            .as_ref()
            .map(castellan_service::captcha::Captcha::new)
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))?,
        actors,
        metrics,
        workers,
    })
}
