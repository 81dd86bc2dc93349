// SPDX-License-Identifier: GPL-3.0-or-later
//! The raw milter byte stream into the daemon's listener: the daemon ([`Builder`]) runs
//! in this process on a Unix socket with the fixture configuration of
//! [`message`](super::message), each input is written to a new connection as it is
//! (framing, lengths, unknown commands, truncated packets), and then:
//! - the connection is answered or closed within [`DEADLINE`], never left hanging;
//! - a new connection still negotiates: the daemon keeps serving others.
//!
//! - no thread of the daemon panicked, also where the milter turns a panic into a
//!   tempfail or the runtime swallows it (a panic hook counts them);
//! - a new connection still gets a message decided (an exempt sender's, accepted).
//!
//! The daemon's clock is a manual one, so that the storm, rate and breaker state does
//! not move with the wall clock between inputs.

use crate::Builder;
use crate::clock::ManualClock;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// How long the daemon may take to answer or close a connection whose client has
/// finished writing: longer than the milter's own 20 s for writing a record.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Panics on the daemon's threads since it started.
static DAEMON_PANICS: AtomicUsize = AtomicUsize::new(0);

/// The name every thread of the fixture daemon starts with.
const THREAD: &str = "fuzz-daemon";

/// The most a connection's answers are read (the daemon answers a few bytes a command).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

struct Server {
    socket: PathBuf,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (dir, config) = super::message::write_fixture("stream", |dir| {
            format!("unix:{}", dir.join("milter.sock").display())
        });
        let socket = dir.join("milter.sock");
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(THREAD))
            {
                DAEMON_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("{THREAD}-worker"))
                    .enable_all()
                    .build()
                    .expect("the daemon's runtime");
                runtime.block_on(async move {
                    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
                    let daemon = Builder::new(config)
                        .clock(Arc::new(clock))
                        .admin_socket(None)
                        .start()
                        .await
                        .expect("the fixture daemon starts");
                    let (_reloads, reload_rx) = tokio::sync::mpsc::channel(1);
                    ready.send(()).expect("the fuzz target waits");
                    daemon
                        .run(reload_rx, std::future::pending())
                        .await
                        .expect("the daemon runs");
                });
            })
            .expect("the daemon's thread");
        started
            .recv_timeout(Duration::from_secs(60))
            .expect("the fixture daemon starts within a minute");
        Server { socket }
    })
}

/// One milter packet: length, command, data.
pub fn packet(command: u8, data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len() + 1).expect("a packet under 4 GiB");
    let mut out = len.to_be_bytes().to_vec();
    out.push(command);
    out.extend_from_slice(data);
    out
}

/// The negotiation Postfix opens with: protocol version 6, every action, every step.
pub fn negotiation() -> Vec<u8> {
    let mut data = 6u32.to_be_bytes().to_vec();
    data.extend_from_slice(&0x1FFu32.to_be_bytes());
    data.extend_from_slice(&0x1F_FFFFu32.to_be_bytes());
    packet(b'O', &data)
}

/// The target: writes `data` to a new connection, then checks that the daemon answered
/// or closed it in time and still negotiates on another.
pub fn stream(data: &[u8]) {
    let server = server();
    exchange(&server.socket, data);
    assert_eq!(
        DAEMON_PANICS.load(Ordering::SeqCst),
        0,
        "the daemon panicked on {} bytes",
        data.len()
    );
    let answer = exchange(&server.socket, &probe());
    assert!(
        answer.len() >= 5 && answer[4] == b'O' && answer.ends_with(&[0, 0, 0, 1, b'c']),
        "the daemon no longer decides a plain message after {} bytes: {answer:?}",
        data.len()
    );
}

/// A whole session from an exempt sender (`[exempt] senders`), which every state lets
/// through: the daemon negotiates, and accepts at end of message.
fn probe() -> Vec<u8> {
    static PROBE: OnceLock<Vec<u8>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            session(
                "bulk-ok",
                &["<bob@example.org>"],
                "4AbCdEf999",
                &[("To", "bob@example.org"), ("Subject", "probe")],
            )
        })
        .clone()
}

/// Writes `data`, closes the writing side, and reads what the daemon answers until it
/// closes the connection; panics if it neither answers nor closes within [`DEADLINE`].
fn exchange(socket: &std::path::Path, data: &[u8]) -> Vec<u8> {
    let mut conn = UnixStream::connect(socket).expect("the daemon accepts connections");
    conn.set_write_timeout(Some(DEADLINE)).expect("timeout");
    // The daemon may close the connection before everything is written: that is an answer.
    let _ = conn.write_all(data);
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + DEADLINE;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the daemon neither answered nor closed within {DEADLINE:?} after {} bytes",
            data.len()
        );
        conn.set_read_timeout(Some(left)).expect("timeout");
        match conn.read(&mut buf) {
            Ok(0) => return answer,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                assert!(answer.len() <= MAX_ANSWER, "an endless answer");
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return answer,
        }
    }
}

/// Macros for `stage`, as Postfix sends them.
fn macros(stage: u8, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut data = vec![stage];
    for (name, value) in pairs {
        data.extend_from_slice(name.as_bytes());
        data.push(0);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
    }
    packet(b'D', &data)
}

/// A NUL-terminated string.
fn z(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One whole session as Postfix sends it: negotiation, connect, HELO, MAIL with the
/// SASL `login`, `rcpts`, DATA, `headers`, a body, end of message with `queue_id`, QUIT.
fn session(login: &str, rcpts: &[&str], queue_id: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = negotiation();
    s.extend(macros(b'C', &[("j", "relay.example.org")]));
    let mut connect = z("client.example.org");
    connect.push(b'4');
    connect.extend_from_slice(&25u16.to_be_bytes());
    connect.extend(z("192.0.2.7"));
    s.extend(packet(b'C', &connect));
    s.extend(packet(b'H', &z("client.example.org")));
    s.extend(macros(b'M', &[("{auth_authen}", login)]));
    s.extend(packet(b'M', &z("<ann@example.org>")));
    for r in rcpts {
        s.extend(packet(b'R', &z(r)));
    }
    s.extend(packet(b'T', &[]));
    for (n, v) in headers {
        let mut data = z(n);
        data.extend(z(v));
        s.extend(packet(b'L', &data));
    }
    s.extend(packet(b'N', &[]));
    s.extend(packet(b'B', b"Hello.\r\n"));
    s.extend(macros(b'E', &[("i", queue_id)]));
    s.extend(packet(b'E', &[]));
    s.extend(packet(b'Q', &[]));
    s
}

/// Seeds for the corpus: sessions as Postfix sends them, and broken framings.
pub fn seeds() -> Vec<Vec<u8>> {
    let session = |rcpts: &[&str], queue_id: &str, headers: &[(&str, &str)]| {
        session("ann", rcpts, queue_id, headers)
    };
    let plain = session(
        &["<bob@example.org>"],
        "4AbCdEf001",
        &[("To", "bob@example.org"), ("Subject", "lunch")],
    );
    let held = session(
        &["<ward@example.org>"],
        "4AbCdEf002",
        &[("To", "bob@example.org"), ("Subject", "Bcc to a ward")],
    );
    let refused = session(
        &["<all-staff@example.org>"],
        "4AbCdEf003",
        &[("To", "all-staff@example.org"), ("Subject", "all")],
    );
    let mut aborted = negotiation();
    aborted.extend(packet(b'M', &z("<ann@example.org>")));
    aborted.extend(packet(b'A', &[]));
    aborted.extend(packet(b'E', &[]));
    let mut unknown = negotiation();
    unknown.extend(packet(b'Z', b"what?"));
    let mut oversized = negotiation();
    oversized.extend_from_slice(&0x7FFF_FFFFu32.to_be_bytes());
    oversized.push(b'B');
    let truncated = plain[..plain.len() / 2].to_vec();
    vec![plain, held, refused, aborted, unknown, oversized, truncated]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_seeds_are_answered_and_a_plain_session_is_accepted() {
        for seed in seeds() {
            stream(&seed);
        }
        let answer = exchange(&server().socket, &seeds()[0]);
        // The negotiation's answer, then DATA's 'c'ontinue, then end of message's.
        assert_eq!(answer[4], b'O');
        assert!(answer.ends_with(&[0, 0, 0, 1, b'c']), "{answer:?}");
        let refused = exchange(&server().socket, &seeds()[2]);
        let text = String::from_utf8_lossy(&refused);
        assert!(text.contains("550 5.7.1"), "{text}");
    }

    proptest! {
        #![proptest_config(crate::fuzz::proptest_config(64, 21))]

        /// A seed cut, spliced and corrupted anywhere is still answered or closed.
        #[test]
        fn corrupted_sessions_are_answered_or_closed(
            seed in 0usize..7,
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let mut data = seeds()[seed].clone();
            for (at, byte) in flips {
                let i = at.index(data.len());
                data[i] = byte;
            }
            data.truncate(cut.index(data.len() + 1));
            stream(&data);
        }
    }
}
