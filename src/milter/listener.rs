// SPDX-License-Identifier: GPL-3.0-or-later
//! The milter socket: binds `inet:` or `unix:` addresses, sets TCP_NODELAY on every
//! accepted TCP connection and re-arms TCP_QUICKACK after each read from it (see
//! [`QuickAckStream`]), and stops accepting when shutdown begins.

use crate::config::ListenAddr;
use crate::unix_socket::{self, SocketFile};
use indymilter::{EitherStream, Listener};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tracing::warn;

/// Why the milter socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The host name did not resolve.
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        /// The configured address.
        addr: ListenAddr,
        /// The resolver error.
        #[source]
        source: io::Error,
    },
    /// Another process listens there.
    #[error("cannot listen on {addr}: the address is already in use (is another milter running?)")]
    InUse {
        /// The configured address.
        addr: ListenAddr,
    },
    /// Any other socket error.
    #[error("cannot listen on {addr}: {source}")]
    Io {
        /// The configured address.
        addr: ListenAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A bound milter socket.
#[derive(Debug)]
pub enum MilterListener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix-domain socket.
    Unix {
        /// The listener.
        listener: UnixListener,
        /// Held only so that the socket file is removed when the listener is dropped.
        _file: SocketFile,
    },
}

impl MilterListener {
    /// Binds the configured address; `socket_mode` applies to unix sockets.
    pub async fn bind(addr: &ListenAddr, socket_mode: u32) -> Result<Self, BindError> {
        let io_err = |source: io::Error| {
            if source.kind() == io::ErrorKind::AddrInUse {
                BindError::InUse { addr: addr.clone() }
            } else {
                BindError::Io {
                    addr: addr.clone(),
                    source,
                }
            }
        };
        match addr {
            ListenAddr::Inet { host, port } => {
                let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|source| BindError::Resolve {
                        addr: addr.clone(),
                        source,
                    })?
                    .collect();
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for a in addrs {
                    match TcpListener::bind(a).await {
                        Ok(l) => return Ok(MilterListener::Tcp(l)),
                        Err(e) => last = e,
                    }
                }
                Err(io_err(last))
            }
            ListenAddr::Unix(path) => {
                let (listener, file) =
                    unix_socket::bind(path, socket_mode).await.map_err(io_err)?;
                Ok(MilterListener::Unix {
                    listener,
                    _file: file,
                })
            }
        }
    }

    /// The bound TCP address (for tests that bind port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            MilterListener::Tcp(l) => l.local_addr().ok(),
            MilterListener::Unix { .. } => None,
        }
    }
}

/// An accepted TCP milter connection that acknowledges what it reads at once.
///
/// Sendmail writes each milter packet (a macro packet, then the command) with its own
/// `write()` and without TCP_NODELAY, so Nagle holds the command until the macro packet
/// is acknowledged; a milter socket in Linux's delayed-ACK mode acknowledges it only
/// after about 40 ms: two such stalls per message (about 90 ms). TCP_QUICKACK
/// sends the pending ACK now, but Linux leaves quick-ACK mode again on its own, so it
/// is set after every read that returned data (one `setsockopt` per read; TCP_NODELAY
/// on our side stays set as well). Elsewhere than on Linux this is a plain stream.
#[derive(Debug)]
pub struct QuickAckStream(TcpStream);

impl QuickAckStream {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream) -> Self {
        QuickAckStream(stream)
    }

    /// The wrapped connection (the tests read its socket options).
    #[cfg(test)]
    pub fn get_ref(&self) -> &TcpStream {
        &self.0
    }

    #[cfg(target_os = "linux")]
    fn quickack(&self) {
        // A failure only costs speed; the connection itself is unaffected.
        let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
    }

    #[cfg(not(target_os = "linux"))]
    fn quickack(&self) {}
}

impl AsyncRead for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.quickack();
        }
        polled
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A listener that closes its socket once `stop` completes, so no new connection is
/// accepted while messages in flight are finished.
pub struct StoppableListener {
    inner: Option<MilterListener>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StoppableListener {
    /// Wraps a bound listener.
    pub fn new(inner: MilterListener, stop: impl Future<Output = ()> + Send + 'static) -> Self {
        StoppableListener {
            inner: Some(inner),
            stop: Box::pin(stop),
            backoff: None,
        }
    }
}

impl Listener for StoppableListener {
    type Io = EitherStream<QuickAckStream, UnixStream>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        if self.inner.is_some() && self.stop.as_mut().poll(cx).is_ready() {
            self.inner = None;
        }
        if let Some(sleep) = &mut self.backoff {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.backoff = None;
        }
        let accepted = match &mut self.inner {
            None => Poll::Pending,
            Some(MilterListener::Tcp(l)) => {
                TcpListener::poll_accept(l, cx).map_ok(|(stream, _)| {
                    if let Err(e) = stream.set_nodelay(true) {
                        warn!("cannot set TCP_NODELAY on a milter connection: {e}");
                    }
                    EitherStream::Tcp(QuickAckStream::new(stream))
                })
            }
            Some(MilterListener::Unix { listener: l, .. }) => {
                UnixListener::poll_accept(l, cx).map_ok(|(stream, _)| EitherStream::Unix(stream))
            }
        };
        match accepted {
            // indymilter stops serving when accept fails, so transient errors (a client
            // that hung up, too many open files) are logged and retried instead.
            Poll::Ready(Err(e)) => {
                warn!("cannot accept a milter connection, retrying: {e}");
                let delay = match e.kind() {
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => 0,
                    _ => 100,
                };
                let mut sleep =
                    Box::pin(tokio::time::sleep(std::time::Duration::from_millis(delay)));
                if sleep.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                } else {
                    self.backoff = Some(sleep);
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn inet0() -> ListenAddr {
        "inet:127.0.0.1:0".parse().expect("valid address")
    }

    #[tokio::test]
    async fn accepted_tcp_connections_have_nodelay() {
        let bound = MilterListener::bind(&inet0(), 0o660).await.expect("bind");
        let addr = bound.local_addr().expect("tcp address");
        let mut listener = StoppableListener::new(bound, std::future::pending());
        let _client = TcpStream::connect(addr).await.expect("connect");
        let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("accept in time")
            .expect("accept");
        match accepted {
            EitherStream::Tcp(s) => assert!(s.get_ref().nodelay().expect("getsockopt")),
            EitherStream::Unix(_) => panic!("expected TCP"),
        }
    }

    /// Reads from the accepted connection re-arm TCP_QUICKACK. The socket is first put
    /// into delayed-ACK mode by hand (TCP_QUICKACK 0 reads back as 0), then one read
    /// through the listener's stream must leave it in quick-ACK mode again. This checks
    /// the mechanism, not the speed: without the re-arm the option would still read 0,
    /// unless the machine stalled the test for a whole delayed-ACK timeout (about 40 ms),
    /// after which Linux leaves delayed-ACK mode on its own.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn reads_rearm_tcp_quickack() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let bound = MilterListener::bind(&inet0(), 0o660).await.expect("bind");
        let addr = bound.local_addr().expect("tcp address");
        let mut listener = StoppableListener::new(bound, std::future::pending());
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("accept in time")
            .expect("accept");
        let EitherStream::Tcp(mut server) = accepted else {
            panic!("expected TCP");
        };
        let quickack = |s: &QuickAckStream| {
            socket2::SockRef::from(s.get_ref())
                .tcp_quickack()
                .expect("getsockopt TCP_QUICKACK")
        };
        let mut buf = [0u8; 64];
        for round in 0..3u8 {
            socket2::SockRef::from(server.get_ref())
                .set_tcp_quickack(false)
                .expect("setsockopt TCP_QUICKACK");
            assert!(!quickack(&server), "round {round}: delayed-ACK mode set");
            let packet = [0, 0, 0, 2, b'D', round];
            client.write_all(&packet).await.expect("client write");
            let n = tokio::time::timeout(Duration::from_secs(10), server.read(&mut buf))
                .await
                .expect("read in time")
                .expect("read");
            assert!(n > 0, "round {round}: data read");
            assert!(
                quickack(&server),
                "round {round}: the read re-armed TCP_QUICKACK"
            );
            server
                .write_all(b"\0\0\0\x01c")
                .await
                .expect("server write");
            let mut reply = [0u8; 5];
            tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut reply))
                .await
                .expect("reply in time")
                .expect("reply");
        }
    }

    #[tokio::test]
    async fn stopping_closes_the_socket() {
        let bound = MilterListener::bind(&inet0(), 0o660).await.expect("bind");
        let addr = bound.local_addr().expect("tcp address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut listener = StoppableListener::new(bound, async {
            let _ = rx.await;
        });
        tx.send(()).expect("send stop");
        let pending = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(pending.is_err(), "a stopped listener accepts nothing");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port is closed"
        );
    }

    #[tokio::test]
    async fn unix_socket_gets_its_mode_and_is_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("fanout-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("m.sock");
        let addr = ListenAddr::Unix(path.clone());
        let bound = MilterListener::bind(&addr, 0o640).await.expect("bind");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
        let err = MilterListener::bind(&addr, 0o640)
            .await
            .expect_err("in use");
        assert!(matches!(err, BindError::InUse { .. }), "{err}");
        drop(bound);
        assert!(!path.exists());
        std::fs::write(&path, b"not a socket").expect("file");
        let err = MilterListener::bind(&addr, 0o640)
            .await
            .expect_err("not a socket");
        assert!(err.to_string().contains("is not a socket"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
