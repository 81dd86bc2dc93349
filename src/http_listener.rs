// SPDX-License-Identifier: GPL-3.0-or-later
//! A bound HTTP listener, TCP or a unix socket, for the daemon's two web endpoints:
//! the review desk and `/metrics`.

use crate::config::ListenAddr;
use axum::Router;
use std::net::SocketAddr;

/// A bound listener.
pub enum HttpListener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// A unix socket, removed when dropped.
    Unix(tokio::net::UnixListener, crate::unix_socket::SocketFile),
}

impl HttpListener {
    /// Binds `addr`; a unix socket gets permissions `mode`.
    pub async fn bind(addr: &ListenAddr, mode: u32) -> std::io::Result<HttpListener> {
        match addr {
            ListenAddr::Inet { host, port } => Ok(HttpListener::Tcp(
                tokio::net::TcpListener::bind((host.as_str(), *port)).await?,
            )),
            ListenAddr::Unix(path) => {
                let (listener, file) = crate::unix_socket::bind(path, mode).await?;
                Ok(HttpListener::Unix(listener, file))
            }
        }
    }

    /// The bound TCP address (tests bind port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            HttpListener::Tcp(l) => l.local_addr().ok(),
            HttpListener::Unix(..) => None,
        }
    }

    /// Serves `app` until `shutdown` completes; on TCP the handlers can read the peer
    /// address (`ConnectInfo<SocketAddr>`).
    pub async fn serve(
        self,
        app: Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self {
            HttpListener::Tcp(l) => {
                axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            HttpListener::Unix(l, _file) => {
                axum::serve(l, app).with_graceful_shutdown(shutdown).await
            }
        }
    }
}
