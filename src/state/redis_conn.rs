// SPDX-License-Identifier: GPL-3.0-or-later
//! How the Redis backend reaches its server: one address (`redis://`, `rediss://` with
//! TLS through rustls and ring, `redis+unix://`), or the master a set of Redis
//! Sentinels names (`[state.sentinel]`).
//!
//! Both give a [`RedisConn`], a cheap-to-clone connection that reconnects by itself.
//! With Sentinel, the master is looked up at the first command and again after any
//! command fails in a way that says the server is gone or no longer the master
//! (connection refused or dropped, timeout, `READONLY`, `MASTERDOWN`, `LOADING`) or
//! is given up by its caller before it answered (a master that hangs): the
//! failing command still fails (the failover in [`super::failover`] falls back per
//! `on_failure` and probes), and the next one goes to the master the sentinels name
//! then, so that shared counting resumes on the promoted replica.

use super::StateError;
use crate::config::RedisConnSettings;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    ClientTlsConfig, Cmd, ConnectionAddr, IntoConnectionInfo as _, Pipeline, RedisError,
    RedisFuture, TlsCertificates, TlsMode, Value,
};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// A connection to the Redis server (or to the master the sentinels name).
#[derive(Clone)]
pub(crate) struct RedisConn(Kind);

#[derive(Clone)]
enum Kind {
    Direct(ConnectionManager),
    Sentinel(Arc<Sentinel>),
}

/// The master behind a set of sentinels.
struct Sentinel {
    /// The name the sentinels monitor it under, for logs.
    name: String,
    /// Asks the sentinels; one lookup at a time.
    client: tokio::sync::Mutex<SentinelClient>,
    /// The master in use, if known and not suspected gone.
    current: Mutex<Master>,
    config: ConnectionManagerConfig,
    db: i64,
}

#[derive(Default)]
struct Master {
    /// The last master found: its address and connection.
    found: Option<(String, ConnectionManager)>,
    /// False once a command on it failed as if it were gone: look it up again.
    trusted: bool,
}

/// The connection settings every connection shares: `timeout` per connection attempt
/// and per response, one retry, reconnection backoff from 50 ms to 1 s.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}

fn err(e: RedisError) -> StateError {
    StateError(format!("redis: {e}"))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, StateError> {
    std::fs::read(path).map_err(|e| {
        StateError(format!(
            "cannot read the {what} \"{}\": {e}",
            path.display()
        ))
    })
}

/// The CA and client certificate of `settings`, when any is set.
fn certificates(settings: &RedisConnSettings) -> Result<Option<TlsCertificates>, StateError> {
    let root_cert = match &settings.ca_file {
        Some(p) => Some(read(p, "CA file")?),
        None => None,
    };
    let client_tls = match &settings.client_cert {
        Some((cert, key)) => Some(ClientTlsConfig {
            client_cert: read(cert, "client certificate")?,
            client_key: read(key, "client key")?,
        }),
        None => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// TCP_NODELAY on (redis-rs leaves it off): with Nagle's algorithm a request written
/// while an earlier one on the same connection is unanswered waits for that answer's
/// ACK, so the messages sharing the connection queue behind each other's round trips.
fn tcp() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// rustls with ring, the provider the whole program uses (idempotent).
fn use_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A connection to `url` (authenticating with `password` when given, instead of one in
/// `url`), or with `[state.sentinel]` to the master the sentinels name (then only the
/// scheme, user, password and database of `url` are used). Connects lazily.
pub(crate) fn connect(
    url: &str,
    password: Option<&str>,
    settings: &RedisConnSettings,
    timeout: Duration,
) -> Result<RedisConn, StateError> {
    use_ring();
    let mut info = url
        .into_connection_info()
        .map_err(err)?
        .set_tcp_settings(tcp());
    if let Some(password) = password {
        let redis = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(redis);
    }
    let certs = certificates(settings)?;
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let config = manager_config(timeout);
    let Some(sentinel) = &settings.sentinel else {
        let client = match certs {
            Some(certs) if tls => redis::Client::build_with_tls(info, certs),
            _ => redis::Client::open(info),
        }
        .map_err(err)?;
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(err)?;
        return Ok(RedisConn(Kind::Direct(conn)));
    };

    let mut addrs = Vec::new();
    let (mut user, mut pass) = (None, None);
    for u in &sentinel.urls {
        let s = u.expose().into_connection_info().map_err(|e| {
            StateError(format!(
                "sentinel {}: {}",
                u.redacted(),
                crate::config::secret::redact_url_in(&e.to_string(), u.expose())
            ))
        })?;
        user = user.or_else(|| s.redis_settings().username().map(str::to_owned));
        pass = pass.or_else(|| s.redis_settings().password().map(str::to_owned));
        addrs.push(s.addr().clone());
    }
    if let Some(file) = &sentinel.password_file {
        pass = Some(crate::config::ldap::read_secret(file).map_err(StateError)?);
    }
    let sentinel_tls = addrs
        .iter()
        .any(|a| matches!(a, ConnectionAddr::TcpTls { .. }));
    let redis = info.redis_settings();
    let mut b = SentinelClientBuilder::new(addrs, &sentinel.master, SentinelServerType::Master)
        .map_err(err)?
        .set_client_to_redis_db(redis.db())
        .set_client_to_redis_tcp_settings(tcp())
        .set_client_to_sentinel_tcp_settings(tcp());
    if let Some(u) = redis.username() {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = redis.password() {
        b = b.set_client_to_redis_password(p);
    }
    if let Some(u) = &user {
        b = b.set_client_to_sentinel_username(u);
    }
    if let Some(p) = &pass {
        b = b.set_client_to_sentinel_password(p);
    }
    if tls {
        b = b.set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(c) = &certs {
            b = b.set_client_to_redis_certificates(c.clone());
        }
    }
    if sentinel_tls {
        b = b.set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(c) = certs {
            b = b.set_client_to_sentinel_certificates(c);
        }
    }
    let client = b.build().map_err(err)?;
    Ok(RedisConn(Kind::Sentinel(Arc::new(Sentinel {
        name: crate::text::neutralize(&sentinel.master).into_owned(),
        client: tokio::sync::Mutex::new(client),
        current: Mutex::new(Master::default()),
        config,
        db: redis.db(),
    }))))
}

/// True when `e` says the server is gone or is no longer the master.
fn master_suspect(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

impl Sentinel {
    /// The master's connection, looked up through the sentinels unless trusted.
    async fn master(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(c) = self.trusted() {
            return Ok(c);
        }
        let mut client = self.client.lock().await;
        // Another command may have looked it up while this one waited.
        if let Some(c) = self.trusted() {
            return Ok(c);
        }
        let found = client.async_get_client().await?;
        let addr = found.get_connection_info().addr().to_string();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let conn = match current.found.take() {
            Some((old, conn)) if old == addr => conn,
            old => {
                let conn = ConnectionManager::new_lazy_with_config(found, self.config.clone())?;
                let shown = crate::text::neutralize(&addr).into_owned();
                match old {
                    Some((old, _)) => warn!(
                        sentinel_master = %self.name,
                        "Redis master moved from {} to {shown} (Sentinel failover)",
                        crate::text::neutralize(&old)
                    ),
                    None => info!(sentinel_master = %self.name, "Redis master is {shown}"),
                }
                conn
            }
        };
        current.found = Some((addr, conn.clone()));
        current.trusted = true;
        Ok(conn)
    }

    fn trusted(&self) -> Option<ConnectionManager> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match &current.found {
            Some((_, c)) if current.trusted => Some(c.clone()),
            _ => None,
        }
    }

    /// Notes that a command failed with `e`; a lookup follows when it says the master
    /// is gone.
    fn failed(&self, e: &RedisError) {
        if master_suspect(e) {
            self.distrust();
        }
    }

    fn distrust(&self) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trusted = false;
    }
}

/// A command in flight on the master: dropped before it answered (the caller's
/// timeout ran out, as on a master that hangs or a network cut), the master is
/// looked up again before the next command.
struct InFlight<'a> {
    sentinel: &'a Sentinel,
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.sentinel.distrust();
        }
    }
}

/// Runs `command` on the master `s` names, noting failures and cancellations.
async fn on_master<T, F>(s: &Sentinel, command: F) -> Result<T, RedisError>
where
    F: AsyncFnOnce(&mut ConnectionManager) -> Result<T, RedisError>,
{
    let mut flight = InFlight {
        sentinel: s,
        answered: false,
    };
    let mut conn = s.master().await?;
    let answer = command(&mut conn).await;
    flight.answered = true;
    if let Err(e) = &answer {
        s.failed(e);
    }
    answer
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Kind::Direct(c) => c.req_packed_command(cmd),
            Kind::Sentinel(s) => Box::pin(async move {
                on_master(s, async |c: &mut ConnectionManager| {
                    c.req_packed_command(cmd).await
                })
                .await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Kind::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Kind::Sentinel(s) => Box::pin(async move {
                on_master(s, async |c: &mut ConnectionManager| {
                    c.req_packed_commands(pipeline, offset, count).await
                })
                .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Kind::Direct(c) => c.get_db(),
            Kind::Sentinel(s) => s.db,
        }
    }
}
