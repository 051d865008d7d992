//! The accept loop. It is axum's, plus what axum's lacks against slow and
//! stalled clients: a bound on open connections and on each client
//! address's share of them, a deadline from accept to the first complete
//! request and for each request's headers, an idle timeout for HTTP/1 and
//! HTTP/2 alike, and a shutdown that waits a grace period and no longer.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use castellan_core::config::{Listen, TrustedProxies};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long open connections keep serving after the listener closes,
/// before they are told to close.
const SETTLE: Duration = Duration::from_millis(250);

/// How long a connection that has brought no request yet is waited for
/// once the server stops (within its own first-request deadline).
const FIRST_AT_STOP: Duration = Duration::from_secs(2);

/// Serves `app` until `stop` resolves, then closes what is still open once
/// `limits.shutdown_grace` has passed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Listen,
    proxies: TrustedProxies,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let shares = Shares::new(limits.max_connections_per_client, proxies);
    let builder = http_builder(&limits);
    let watch = Watch {
        first_request: limits.header_read_timeout,
        idle: limits.idle_timeout,
    };
    let (closing, closing_rx) = watch::channel(());
    let serve_one = |io, remote| {
        connection(
            builder.clone(),
            app.clone(),
            io,
            remote,
            watch,
            closing_rx.clone(),
        )
    };
    let mut open = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut stop => break,
        };
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    metrics::counter!("castellan_accept_errors_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Some(share) = shares.take(remote.ip()) else {
            // Closed at once: one address may not hold every slot.
            metrics::counter!("castellan_connections_refused_total", "reason" => "per_client")
                .increment(1);
            continue;
        };
        let conn = serve_one(io, remote);
        open.spawn(async move {
            let _held = (permit, share);
            conn.await
        });
        while open.try_join_next().is_some() {}
        metrics::gauge!("castellan_http_connections").set(open.len() as f64);
    }
    // Connections the kernel has already completed would be reset when the
    // listener closes: take them and answer them too.
    while let Ok(Ok((io, remote))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await {
        open.spawn(serve_one(io, remote));
    }
    drop(listener);
    // A request already in transit on a kept-alive connection is read
    // before the connection is told to close (closing an unread socket
    // resets it); a connection yet to bring its first request waits for it.
    tokio::time::sleep(SETTLE.min(limits.shutdown_grace)).await;
    drop(closing);
    drain(open, limits.shutdown_grace).await;
}

/// HTTP/1 (with the deadline for a request's headers) and HTTP/2.
fn http_builder(limits: &Listen) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Waits for the open connections to finish, for `grace` at most; then
/// closes those still open.
async fn drain(mut open: JoinSet<()>, grace: Duration) {
    let drained = tokio::time::timeout(grace, async { while open.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!(
            still_open = open.len(),
            "shutdown grace period over: closing the connections still open"
        );
        open.abort_all();
    }
}

/// The deadlines a connection's watchdog keeps.
#[derive(Clone, Copy)]
struct Watch {
    /// From accept to the first request's complete headers.
    first_request: Duration,
    /// With no request in flight.
    idle: Duration,
}

/// What a connection is doing, written by its requests and read by its
/// watchdog: requests seen, requests in flight, when the last one ended.
struct Activity {
    opened: Instant,
    /// Woken when the first request begins.
    first: tokio::sync::Notify,
    seen: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last request ended.
    last_ms: AtomicU64,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        if self.seen.fetch_add(1, Ordering::Relaxed) == 0 {
            self.first.notify_one();
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// When the connection is due to be closed, if nothing happens first.
    fn due(&self, watch: Watch) -> Instant {
        if self.seen.load(Ordering::Relaxed) == 0 {
            return self.opened + watch.first_request;
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + watch.idle;
        }
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + watch.idle
    }
}

/// A request in flight; its end restarts the idle clock.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = self.0.opened.elapsed().as_millis() as u64;
        self.0.last_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open connections per client address, so that one address cannot hold
/// every slot; trusted proxies speak for many clients and are exempt.
#[derive(Clone)]
struct Shares {
    max: usize,
    proxies: TrustedProxies,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Shares {
    fn new(max: usize, proxies: TrustedProxies) -> Self {
        Shares {
            max,
            proxies,
            held: Arc::default(),
        }
    }

    /// A share for one more connection from `ip`, or `None` when it holds
    /// its maximum already.
    fn take(&self, ip: IpAddr) -> Option<Share> {
        if self.proxies.contains(ip) {
            return Some(Share(None));
        }
        let ip = client_of(ip);
        let mut held = self.held.lock().expect("never poisoned");
        let n = held.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Share(Some((self.clone(), ip))))
    }
}

/// The client an address belongs to: itself for IPv4, its /64 for IPv6
/// (one host is usually given a whole /64, so counting single addresses
/// would hand it 2^64 shares).
pub(crate) fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

struct Share(Option<(Shares, IpAddr)>);

impl Drop for Share {
    fn drop(&mut self) {
        if let Some((shares, ip)) = self.0.take() {
            let mut held = shares.held.lock().expect("never poisoned");
            if let Some(n) = held.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&ip);
                }
            }
        }
    }
}

/// One connection, which finishes its request in flight and closes once
/// `closing` is dropped (after its first request, if it has brought none
/// yet, within its deadline), or when it brings no first request in time, or
/// idles too long.
async fn connection(
    builder: Builder<TokioExecutor>,
    app: Router,
    io: tokio::net::TcpStream,
    remote: SocketAddr,
    watch: Watch,
    mut closing: watch::Receiver<()>,
) {
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        first: tokio::sync::Notify::new(),
        seen: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
    });
    let seen = activity.clone();
    let service = tower::service_fn(move |req: axum::http::Request<_>| {
        let busy = seen.begin();
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(remote));
        let app = app.clone();
        async move {
            let answer = tower::ServiceExt::oneshot(app, req).await;
            drop(busy);
            answer
        }
    });
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let idled = loop {
        let due = activity.due(watch);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = closing.changed() => break false,
            _ = tokio::time::sleep_until(due) => {
                if activity.due(watch) > Instant::now() {
                    continue;
                }
                let reason = if activity.seen.load(Ordering::Relaxed) == 0 {
                    "no_request"
                } else {
                    "idle"
                };
                metrics::counter!("castellan_connections_closed_total", "reason" => reason)
                    .increment(1);
                if reason == "no_request" {
                    // Nothing to finish: dropping closes the socket, whatever
                    // part of a preface or headers it sent.
                    return;
                }
                break true;
            }
        }
    };
    if !idled && activity.seen.load(Ordering::Relaxed) == 0 {
        // Accepted but not yet read, as when the listener closed with the
        // connection in its queue: its first request is on the way (a proxy
        // sends it with the connection, and would not resend a POST that a
        // close had reset), so it is answered before the connection closes.
        // A request on its way arrives at once; a socket opened ahead of
        // need (a browser's preconnect) would hold the shutdown for good.
        let deadline = (activity.opened + watch.first_request).min(Instant::now() + FIRST_AT_STOP);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = activity.first.notified() => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
    conn.as_mut().graceful_shutdown();
    if idled {
        // A peer that does not take the close is cut off after one more
        // idle period; at shutdown the grace period does that.
        let _ = tokio::time::timeout(watch.idle, conn).await;
    } else {
        let _ = conn.await;
    }
}

#[cfg(test)]
mod tests {
    use super::client_of;

    #[test]
    fn an_ipv6_client_is_its_64() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(client_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_of(ip("2001:db8:1:2:ffff::9")), ip("2001:db8:1:2::"));
        assert_ne!(client_of(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_of(ip("192.0.2.7")), ip("192.0.2.7"));
    }
}
