// SPDX-License-Identifier: GPL-3.0-or-later
//! The `/metrics` listener (`[metrics] listen`): apart from the review desk, read-only,
//! no message data. With `[metrics] token_file` a scrape must bring that token as
//! `Authorization: Bearer TOKEN`; the file is read at each scrape, so a new token takes
//! effect without a reload.

use super::Metrics;
use crate::config::ListenAddr;
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

/// Scrapes within this long of a refresh serve its values without reading again, so
/// that a scraper pair, `stats` and Prometheus together read the store once.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// What the listener serves.
#[derive(Clone)]
pub struct Exporter {
    /// The registry.
    pub metrics: Arc<Metrics>,
    /// Run before a scrape, one at a time, bounded by [`READ_TIMEOUT`], at most once
    /// per [`FRESH_FOR`].
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

    /// Reads what lives outside the registry, unless another scrape did within
    /// [`FRESH_FOR`]; concurrent scrapes wait for the one reading.
    pub async fn refresh(&self) {
        let deadline = Instant::now() + READ_TIMEOUT;
        let Ok(mut last) = tokio::time::timeout_at(deadline.into(), self.last.lock()).await else {
            warn!("metrics: another scrape is still reading; served the last values read");
            return;
        };
        if last.is_some_and(|at| at.elapsed() < FRESH_FOR) {
            return;
        }
        *last = Some(Instant::now());
        if tokio::time::timeout_at(deadline.into(), (self.refresh)())
            .await
            .is_err()
        {
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
        let token = match token {
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
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| crate::token::same_secret(g, token.trim())) {
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
pub enum MetricsListener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// A unix socket, removed when dropped.
    Unix(tokio::net::UnixListener, crate::unix_socket::SocketFile),
}

impl MetricsListener {
    /// Binds `[metrics] listen`.
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<MetricsListener> {
        match addr {
            ListenAddr::Inet { host, port } => Ok(MetricsListener::Tcp(
                tokio::net::TcpListener::bind((host.as_str(), *port)).await?,
            )),
            ListenAddr::Unix(path) => {
                let (listener, file) = crate::unix_socket::bind(path, SOCKET_MODE).await?;
                Ok(MetricsListener::Unix(listener, file))
            }
        }
    }

    /// The bound TCP address (tests bind port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            MetricsListener::Tcp(l) => l.local_addr().ok(),
            MetricsListener::Unix(..) => None,
        }
    }

    /// Serves `exporter` until `shutdown` completes.
    pub async fn serve(
        self,
        exporter: Exporter,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = router(exporter);
        match self {
            MetricsListener::Tcp(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
            MetricsListener::Unix(l, _file) => {
                axum::serve(l, app).with_graceful_shutdown(shutdown).await
            }
        }
    }
}
