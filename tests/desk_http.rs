// SPDX-License-Identifier: GPL-3.0-or-later
//! The review desk as the daemon serves it: `review passwd` writes the users file, the
//! daemon ([`Builder`]) serves `[review] listen` on 127.0.0.1:0 next to the milter, a
//! user logs in over real HTTP, and a shutdown stops the desk too. (The pages and their
//! safety rules are tested in process in `src/desk/tests.rs`.)

use fanout_milter::Builder;
use fanout_milter::config;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_fanout-milter");
const DEADLINE: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request on a new connection; the whole answer.
async fn http(addr: std::net::SocketAddr, request: String) -> String {
    tokio::time::timeout(DEADLINE, async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    })
    .await
    .expect("an answer in time")
}

fn login_request(addr: std::net::SocketAddr, user: &str, password: &str) -> String {
    let body = format!("user={user}&password={password}");
    format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_the_desk_to_a_user_made_by_review_passwd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let users = dir.path().join("review-users");
    let conf = dir.path().join("fanout-milter.toml");
    std::fs::write(
        &conf,
        format!(
            "[milter]\nlisten = \"inet:127.0.0.1:0\"\n[domains]\ninternal = [\"example.org\"]\n\
             [quarantine]\nstate_dir = \"{}\"\n[postfix]\nrecipient_delimiter = \"+\"\n\
             myorigin = \"example.org\"\n[review]\nlisten = \"inet:127.0.0.1:0\"\n\
             users_file = \"{}\"\n",
            state.display(),
            users.display()
        ),
    )
    .expect("write the configuration");
    let secret = dir.path().join("password");
    std::fs::write(&secret, "rosebud-rosebud\n").expect("write the password");

    let passwd = Command::new(BIN)
        .args([
            "-c",
            conf.to_str().unwrap(),
            "review",
            "passwd",
            "alice",
            "--role",
            "admin",
        ])
        .arg("--password-file")
        .arg(&secret)
        .output()
        .expect("run review passwd");
    assert!(passwd.status.success(), "{passwd:?}");
    let mode = std::fs::metadata(&users)
        .expect("users file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&users).expect("read the users file");
    assert!(text.contains("alice:admin:$argon2id$"), "{text}");
    let short = Command::new(BIN)
        .args([
            "-c",
            conf.to_str().unwrap(),
            "review",
            "passwd",
            "bob",
            "--role",
            "viewer",
        ])
        .arg("--password-file")
        .arg(&conf)
        .output()
        .expect("run review passwd");
    assert_eq!(short.status.code(), Some(2), "a short password: {short:?}");
    let bad = Command::new(BIN)
        .args([
            "-c",
            conf.to_str().unwrap(),
            "review",
            "passwd",
            "bad name",
            "--role",
            "root",
        ])
        .arg("--no-password")
        .output()
        .expect("run review passwd");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let listed = Command::new(BIN)
        .args(["-c", conf.to_str().unwrap(), "review", "users"])
        .output()
        .expect("run review users");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("alice") && listed.contains("admin"),
        "{listed}"
    );
    assert!(!listed.contains("argon2"), "no hashes: {listed}");

    let config = config::load(&conf).expect("configuration");
    let daemon = tokio::time::timeout(DEADLINE, Builder::new(config).admin_socket(None).start())
        .await
        .expect("start in time")
        .expect("start");
    let desk = daemon.desk_addr().expect("the desk listens");
    let key = std::fs::metadata(state.join("desk.key")).expect("the desk key was created");
    assert_eq!(key.len(), 32);
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let (_reloads, reload_rx) = tokio::sync::mpsc::channel(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(daemon.run(reload_rx, async move {
        let _ = stopped.await;
    }));

    let page = http(
        desk,
        format!("GET / HTTP/1.1\r\nHost: {desk}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 303"), "{page}");
    assert!(page.contains("location: /login"), "{page}");
    let wrong = http(desk, login_request(desk, "alice", "rosebud")).await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let right = http(desk, login_request(desk, "alice", "rosebud-rosebud")).await;
    assert!(right.starts_with("HTTP/1.1 303"), "{right}");
    let cookie = right
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let list = http(
        desk,
        format!("GET / HTTP/1.1\r\nHost: {desk}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(list.starts_with("HTTP/1.1 200"), "{list}");
    assert!(
        list.contains("id=\"held\"") && list.contains("alice"),
        "{list}"
    );
    assert!(
        list.contains("content-security-policy: default-src 'none'"),
        "{list}"
    );

    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("the daemon stops in time")
        .expect("task")
        .expect("run");
    assert!(
        tokio::net::TcpStream::connect(desk).await.is_err(),
        "the desk stopped with the daemon"
    );
}
