// SPDX-License-Identifier: GPL-3.0-or-later
//! The `/metrics` listener (`[metrics] listen`): apart from the review desk, read-only,
//! no message data. With `[metrics] token_file` a scrape must bring that token as
//! `Authorization: Bearer TOKEN`; the file is read at each scrape, so a new token takes
//! effect without a reload.

use super::Metrics;
use crate::config::ListenAddr;
use crate::http_listener::HttpListener;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

/// The OpenMetrics media type, served to clients that ask for it (Prometheus does).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text media type, served to every other client.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for the values read at scrape time (the store, storms)
/// before it serves the last ones read.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Mode of a unix metrics socket: the owner and its group may connect.
const SOCKET_MODE: u32 = 0o660;

/// Reads what lives outside the registry into it (the quarantine store, storms, the
/// brake) before each scrape.
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the listener serves.
#[derive(Clone)]
pub struct Exporter {
    /// The registry.
    pub metrics: Arc<Metrics>,
    /// Run before a scrape, one at a time, bounded by [`READ_TIMEOUT`]; scrapes that
    /// arrive while one runs wait for the next and share it.
    pub refresh: Refresh,
    /// The bearer token's file, when scrapes must bring one.
    pub token_file: Option<PathBuf>,
    /// When the last refresh started; held while one runs.
    last: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl Exporter {
    /// Serves `metrics`, running `refresh` before scrapes.
    pub fn new(metrics: Arc<Metrics>, refresh: Refresh, token_file: Option<PathBuf>) -> Exporter {
        Exporter {
            metrics,
            refresh,
            token_file,
            last: Arc::default(),
        }
    }

    /// Reads what lives outside the registry, one reading at a time: a scrape that
    /// finds a reading started after it arrived uses that one, so any number of
    /// concurrent scrapes cost at most two readings, and none serves values older than
    /// its own arrival.
    pub async fn refresh(&self) {
        let arrived = Instant::now();
        let Ok(mut last) = tokio::time::timeout(READ_TIMEOUT, self.last.lock()).await else {
            warn!("metrics: another scrape is still reading; served the last values read");
            return;
        };
        if last.is_some_and(|started| started >= arrived) {
            return;
        }
        // Marked done only when it finished: after a reading that failed, timed out
        // or was dropped (its client gone), the scrapes waiting behind it read again.
        let started = Instant::now();
        if tokio::time::timeout(READ_TIMEOUT, (self.refresh)())
            .await
            .is_ok()
        {
            *last = Some(started);
        } else {
            warn!(
                "metrics: the store or the shared state did not answer within {}s; served the \
                 last values read",
                READ_TIMEOUT.as_secs()
            );
        }
    }

    /// The values now, read at scrape time first (see [`Exporter::refresh`]), as
    /// OpenMetrics or as Prometheus text.
    pub async fn render(&self, openmetrics: bool) -> String {
        self.refresh().await;
        if openmetrics {
            self.metrics.encode()
        } else {
            self.metrics.encode_prometheus()
        }
    }
}

/// The routes: `GET /metrics`, nothing else.
pub fn router(exporter: Exporter) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(exporter)
}

async fn scrape(State(exporter): State<Exporter>, headers: HeaderMap) -> Response {
    if let Some(file) = &exporter.token_file {
        let path = file.clone();
        let token = tokio::task::spawn_blocking(move || crate::config::ldap::read_secret(&path))
            .await
            .unwrap_or_else(|e| Err(format!("reader task failed: {e}")));
        let token = match token.map(|t| t.trim().to_owned()) {
            Ok(token) if token.is_empty() => {
                warn!("metrics: the token file holds no token, every scrape is refused");
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            Ok(token) => token,
            Err(e) => {
                warn!(
                    "metrics: cannot read the token file, every scrape is refused: {}",
                    crate::text::neutralize(&e)
                );
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if !given.is_some_and(|g| crate::token::same_secret(g, &token)) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
            )
                .into_response();
        }
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let body = exporter.render(openmetrics).await;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if openmetrics {
            OPENMETRICS
        } else {
            PROMETHEUS_TEXT
        }),
    );
    response
}

/// A bound metrics listener.
pub struct MetricsListener(HttpListener);

impl MetricsListener {
    /// Binds `[metrics] listen`.
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<MetricsListener> {
        HttpListener::bind(addr, SOCKET_MODE)
            .await
            .map(MetricsListener)
    }

    /// The bound TCP address (tests bind port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.0.local_addr()
    }

    /// Serves `exporter` until `shutdown` completes.
    pub async fn serve(
        self,
        exporter: Exporter,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.0.serve(router(exporter), shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(reads: Arc<AtomicUsize>, gate: Arc<tokio::sync::Notify>) -> Refresh {
        Arc::new(move || {
            let reads = reads.clone();
            let gate = gate.clone();
            Box::pin(async move {
                reads.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
            })
        })
    }

    #[tokio::test]
    async fn concurrent_scrapes_share_a_reading_and_later_ones_read_again() {
        let reads = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let exporter = Exporter::new(
            Arc::new(Metrics::new()),
            counting(reads.clone(), gate.clone()),
            None,
        );
        let first = tokio::spawn({
            let e = exporter.clone();
            async move { e.render(false).await }
        });
        while reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Ten more arrive while the first reading runs: they wait, then one of them
        // reads once for all (their arrival is after the first reading started).
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let e = exporter.clone();
                tokio::spawn(async move { e.render(true).await })
            })
            .collect();
        tokio::task::yield_now().await;
        gate.notify_one();
        assert!(first.await.unwrap().contains("fanout_decisions_total"));
        while reads.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for w in waiting {
            assert!(w.await.unwrap().ends_with("# EOF\n"));
        }
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "eleven scrapes, two readings"
        );
        gate.notify_one();
        exporter.render(false).await;
        assert_eq!(
            reads.load(Ordering::SeqCst),
            3,
            "a later scrape reads again"
        );
    }
}
