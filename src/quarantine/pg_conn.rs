// SPDX-License-Identifier: GPL-3.0-or-later
//! One blocking connection to PostgreSQL whose every call ends by a deadline, for the
//! fleet's quarantine store ([`super::pg::PgStore`]).
//!
//! A server that accepts the connection but never answers (a stopped or hung process:
//! its kernel still acknowledges every packet, so neither `tcp_user_timeout` nor
//! keepalives notice) would otherwise keep the caller, and the store's connection lock,
//! until it woke up. Here each call runs the asynchronous client on the connection's
//! own small runtime under [`tokio::time::timeout_at`]: when the deadline passes, the
//! connection is dropped at once (its socket closed), the call fails with
//! [`PgError::NoAnswer`], and the next call connects again. A transaction cut short
//! that way never sent its COMMIT, so the server rolls it back when it reads the
//! closed socket; a statement the server is still running is ended by its own
//! `statement_timeout`.

use crate::config::fleet_store::PgTls;
use std::time::Instant;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::time::error::Elapsed;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How connections are made: plain TCP, or TLS whose server certificate must chain to
/// the configured CA certificates and name the URL's host (rustls with ring: never an
/// unverified certificate).
#[derive(Clone)]
pub(super) enum Tls {
    /// Plain TCP (`sslmode=disable`, or no TLS configured).
    Off,
    /// TLS, verified.
    Verified(MakeRustlsConnect),
}

impl Tls {
    /// The connector for `tls` (`None`: plain), trusting exactly its CA certificates.
    pub(super) fn new(tls: Option<&PgTls>) -> Result<Tls, String> {
        let Some(tls) = tls else {
            return Ok(Tls::Off);
        };
        let config = tls.ca_certificates.client_config(&tls.ca_file)?;
        Ok(Tls::Verified(MakeRustlsConnect::new(config)))
    }
}

/// Connects with `tls` and starts driving the connection on the current runtime.
async fn open<T>(config: &Config, tls: T) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// Why a call failed.
#[derive(Debug)]
pub(super) enum PgError {
    /// The client's or the server's error.
    Db(tokio_postgres::Error),
    /// No answer by the deadline: the connection was dropped.
    NoAnswer,
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        PgError::Db(e)
    }
}

/// A connection and the runtime that drives it.
pub(super) struct Conn {
    /// Always `Some` but in `drop`, which shuts it down without waiting.
    runtime: Option<Runtime>,
    client: Client,
    task: JoinHandle<()>,
    /// When the calls now running must have ended.
    deadline: Instant,
    broken: bool,
}

impl Conn {
    /// Connects with `config` and `tls`, giving up at `deadline`.
    pub(super) fn connect(config: &Config, tls: &Tls, deadline: Instant) -> Result<Conn, PgError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| PgError::NoAnswer)?;
        let at = tokio::time::Instant::from_std(deadline);
        let connected = runtime.block_on(async {
            match tls {
                Tls::Off => tokio::time::timeout_at(at, open(config, NoTls)).await,
                Tls::Verified(make) => {
                    tokio::time::timeout_at(at, open(config, make.clone())).await
                }
            }
        });
        let (client, task) = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                runtime.shutdown_background();
                return Err(PgError::Db(e));
            }
            Err(_) => {
                // A host name's lookup runs on a blocking thread that may hang: the
                // runtime is left to it rather than waited for.
                runtime.shutdown_background();
                return Err(PgError::NoAnswer);
            }
        };
        Ok(Conn {
            runtime: Some(runtime),
            client,
            task,
            deadline,
            broken: false,
        })
    }

    /// The runtime that drives the connection.
    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    /// Sets when the calls from now on must have ended.
    pub(super) fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// True when the connection is gone (dropped after a late call, or closed).
    pub(super) fn is_closed(&self) -> bool {
        self.broken || self.client.is_closed()
    }

    /// The answer of a call made until the deadline; past it, the connection is
    /// dropped.
    fn settle<T>(
        &mut self,
        answer: Result<Result<T, tokio_postgres::Error>, Elapsed>,
    ) -> Result<T, PgError> {
        match answer {
            Ok(r) => r.map_err(PgError::Db),
            Err(_) => {
                self.task.abort();
                self.broken = true;
                Err(PgError::NoAnswer)
            }
        }
    }

    /// Opens a transaction, rolled back unless committed.
    pub(super) fn transaction(&mut self) -> Result<Tx<'_>, PgError> {
        self.batch_execute("BEGIN")?;
        Ok(Tx {
            conn: self,
            open: true,
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closes the socket now rather than whenever the runtime is dropped, and
        // does not wait for the runtime's blocking threads (a hung lookup).
        self.task.abort();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A transaction on a [`Conn`].
pub(super) struct Tx<'a> {
    conn: &'a mut Conn,
    open: bool,
}

impl Tx<'_> {
    /// Sets when the calls from now on must have ended (the COMMIT's own time).
    pub(super) fn set_deadline(&mut self, deadline: Instant) {
        self.conn.set_deadline(deadline);
    }

    /// Commits it.
    pub(super) fn commit(mut self) -> Result<(), PgError> {
        self.open = false;
        self.conn.batch_execute("COMMIT")
    }

    /// Rolls it back.
    pub(super) fn rollback(mut self) -> Result<(), PgError> {
        self.open = false;
        self.conn.batch_execute("ROLLBACK")
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open && !self.conn.is_closed() {
            // A failed rollback leaves a broken connection, which is made again.
            let _ = self.conn.batch_execute("ROLLBACK");
        }
    }
}

/// Runs a client method on a [`Db`]'s connection until its deadline.
macro_rules! call {
    ($db:expr, $method:ident($($arg:expr),*)) => {{
        let c = $db.conn();
        if c.broken {
            return Err(PgError::NoAnswer);
        }
        let at = tokio::time::Instant::from_std(c.deadline);
        let client = &c.client;
        let answer = c
            .runtime()
            .block_on(async { tokio::time::timeout_at(at, client.$method($($arg),*)).await });
        c.settle(answer)
    }};
}

/// The calls the store makes, on a connection or in a transaction.
pub(super) trait Db {
    /// The connection.
    fn conn(&mut self) -> &mut Conn;

    /// The rows of a statement.
    fn query(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, PgError> {
        call!(self, query(sql, args))
    }

    /// The one row of a statement.
    fn query_one(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Row, PgError> {
        call!(self, query_one(sql, args))
    }

    /// The row of a statement, if any.
    fn query_opt(
        &mut self,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, PgError> {
        call!(self, query_opt(sql, args))
    }

    /// How many rows a statement changed.
    fn execute(&mut self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<u64, PgError> {
        call!(self, execute(sql, args))
    }

    /// Runs statements without parameters.
    fn batch_execute(&mut self, sql: &str) -> Result<(), PgError> {
        call!(self, batch_execute(sql))
    }
}

impl Db for Conn {
    fn conn(&mut self) -> &mut Conn {
        self
    }
}

impl Db for Tx<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn
    }
}
