//! The edge every request passes on its way to a handler, as one
//! middleware: a fresh request id, the request's span and access line, the
//! client it came from, the deadline, a panic caught, an error rendered in
//! the dialect asked for, and the request metrics. One function rather than
//! a layer each: every layer cost an allocation, a clone and a dispatch per
//! request, and the ten of them halved `/health`'s rate.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use castellan_core::ApiError;
use futures_util::FutureExt;
use tracing::Instrument;

use crate::error::{self, HttpError};
use crate::observability::{self, Probe};
use crate::server::AppState;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub async fn edge(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    // Ids are ours: a client's `X-Request-Id` would otherwise reach the log.
    let id = fresh_id();
    req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    let started = Instant::now();
    let method = observability::method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        id = id.to_str().unwrap_or_default(),
        method,
        route
    );
    let modern = error::wants_2024(req.headers());
    let (req, client) = crate::extract::client_of(&st, req).await;
    let answer = castellan_core::client::serving(
        client,
        deadline(st.config.max_request_duration, next.run(req)),
    );
    let resp = AssertUnwindSafe(answer)
        .catch_unwind()
        .instrument(span.clone())
        .await
        .unwrap_or_else(|_| panicked());
    observability::record(route, method, resp.status().as_u16(), started.elapsed());
    let _in_request = span.enter();
    let mut resp = error::in_dialect(resp, modern, id.to_str().unwrap_or_default());
    access_line(&resp, started.elapsed(), st.config.log_probes);
    resp.headers_mut().entry(X_REQUEST_ID.clone()).or_insert(id);
    resp
}

/// A version 4 UUID from the thread's generator.
fn fresh_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).expect("a UUID is a header value")
}

/// The handler's answer, or 504 once `limit` has passed (zero: no limit).
async fn deadline(limit: Duration, answer: impl Future<Output = Response>) -> Response {
    if limit.is_zero() {
        return answer.await;
    }
    match tokio::time::timeout(limit, answer).await {
        Ok(r) => r,
        Err(_) => HttpError(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT.as_u16(),
            "request_timeout",
            "Processing this request timed out, please retry after a moment.",
        ))
        .into_response(),
    }
}

fn panicked() -> Response {
    metrics::counter!("castellan_panics_total").increment(1);
    HttpError(ApiError::internal(
        "handler panic",
        "a request handler panicked",
    ))
    .into_response()
}

/// The access line of an answer, in the request's span (its id, method and
/// route template: nothing a client wrote). A probe's answer only when
/// asked for, as GoTrue leaves its health check out, or when it is a
/// server error.
fn access_line(res: &Response, latency: Duration, log_probes: bool) {
    let quiet_probe =
        res.extensions().get::<Probe>().is_some() && !log_probes && !res.status().is_server_error();
    if !quiet_probe {
        tracing::info!(
            latency = %format_args!("{} ms", latency.as_millis()),
            status = res.status().as_u16(),
            "finished processing request"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Extension;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};

    use crate::observability::Probe;

    /// The access lines written for three answers: a probe that is up, a
    /// probe that is down, and a plain route's.
    fn access_lines(log_probes: bool) -> Vec<String> {
        let probe = |status: StatusCode| (status, Extension(Probe)).into_response();
        let answers: [(&str, Response); 3] = [
            ("/health", probe(StatusCode::OK)),
            ("/ready", probe(StatusCode::SERVICE_UNAVAILABLE)),
            ("/settings", "{}".into_response()),
        ];
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for (route, answer) in &answers {
                let _span = tracing::info_span!("request", route).entered();
                super::access_line(answer, std::time::Duration::from_millis(3), log_probes);
            }
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains("finished processing request"))
            .map(str::to_string)
            .collect()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_probe_is_logged_when_asked_for_or_when_it_fails() {
        let quiet = access_lines(false);
        assert_eq!(quiet.len(), 2, "{quiet:#?}");
        assert!(
            quiet[0].contains("route=\"/ready\"") && quiet[0].contains("status=503"),
            "{quiet:#?}"
        );
        assert!(quiet[1].contains("route=\"/settings\""), "{quiet:#?}");
        assert!(quiet[1].contains("latency=3 ms"), "{quiet:#?}");
        let all = access_lines(true);
        assert_eq!(all.len(), 3, "{all:#?}");
        assert!(
            all[0].contains("route=\"/health\"") && all[0].contains("status=200"),
            "{all:#?}"
        );
    }

    #[test]
    fn request_ids_are_fresh_uuids() {
        let (a, b) = (super::fresh_id(), super::fresh_id());
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
    }
}
