// SPDX-License-Identifier: GPL-3.0-or-later
//! Test harness: a private Postfix instance on loopback relaying to Postfix's own
//! smtp-sink, and the built fanout-milter binary as a child process; a private
//! redis-server, and a private slapd with the LDAP fixture ([`slapd`]). Every process
//! the harness starts is stopped when its guard drops, also when a test fails.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod http;
pub mod postgres;
mod process;
pub mod slapd;

pub use process::*;

/// Fails loudly when a Postfix tool is missing: the README's test command installs it.
pub fn require_postfix() {
    for tool in [
        "/usr/sbin/postfix",
        "/usr/sbin/smtp-sink",
        "/usr/sbin/postqueue",
        "/usr/sbin/sendmail",
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run scripts/test, which installs Postfix (apt-get) before the tests"
        );
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Postfix's smtp-sink, writing each received transaction to a file.
pub struct Sink {
    /// Port it listens on.
    pub port: u16,
    dir: PathBuf,
    _child: ChildGuard,
}

/// One transaction received by the sink.
#[derive(Clone, Debug)]
pub struct SinkMessage {
    /// The envelope sender (`X-Mail-Args`, first word).
    pub from: String,
    /// Envelope recipients (`X-Rcpt-Args`, first word of each, brackets stripped).
    pub rcpts: Vec<String>,
    /// The whole dump, headers and body.
    pub text: String,
}

impl SinkMessage {
    /// True when a header line `name: ...value...` is present.
    pub fn has_header(&self, name: &str, contains: &str) -> bool {
        self.text.lines().take_while(|l| !l.is_empty()).any(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l[name.len()..].starts_with(':')
                && l.contains(contains)
        })
    }
}

impl Sink {
    /// Starts a sink under `root/sink` on a free port and waits until it listens.
    pub fn start(root: &Path) -> Sink {
        let dir = root.join("sink");
        std::fs::create_dir_all(&dir).expect("sink dir");
        run(Command::new("chown").arg("postfix").arg(&dir));
        let port = free_port();
        let child = Command::new("/usr/sbin/smtp-sink")
            .args(["-u", "postfix", "-4", "-d"])
            .arg(format!("{}/%H%M%S.", dir.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("128")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp-sink");
        let guard = ChildGuard(Some(child));
        wait_for("smtp-sink to listen", || listening(port).then_some(()));
        Sink {
            port,
            dir,
            _child: guard,
        }
    }

    /// Every transaction received so far.
    pub fn messages(&self) -> Vec<SinkMessage> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let arg = |prefix: &str| -> Vec<String> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(prefix))
                    .filter_map(|a| a.split_whitespace().next())
                    .map(|a| a.trim_matches(['<', '>']).to_owned())
                    .collect()
            };
            let from = arg("X-Mail-Args: ").into_iter().next().unwrap_or_default();
            let rcpts = arg("X-Rcpt-Args: ");
            out.push(SinkMessage { from, rcpts, text });
        }
        out
    }

    /// Messages whose dump contains `needle` (for example a unique Subject).
    pub fn find(&self, needle: &str) -> Vec<SinkMessage> {
        self.messages()
            .into_iter()
            .filter(|m| m.text.contains(needle))
            .collect()
    }

    /// Waits until a whole message containing `needle` arrives; `complete` tells a
    /// fully written dump from one smtp-sink is still writing.
    pub fn wait_until(&self, needle: &str, complete: impl Fn(&SinkMessage) -> bool) -> SinkMessage {
        wait_for(&format!("a message with {needle:?} at the sink"), || {
            self.find(needle).into_iter().find(|m| complete(m))
        })
    }

    /// Waits for a test message (see [`message`]) containing `needle`.
    pub fn wait_for(&self, needle: &str) -> SinkMessage {
        self.wait_until(needle, |m| m.text.contains("END-OF-TEST-BODY"))
    }
}

/// A private Postfix instance: own config, queue and data directories, smtpd on a free
/// loopback port, everything relayed to the sink.
pub struct Postfix {
    /// `config_directory`.
    pub etc: PathBuf,
    /// The smtpd port.
    pub smtp_port: u16,
    root: PathBuf,
    /// The master process, once it runs: stopped by pid if `postfix stop` cannot
    /// (the scratch directory may be gone first, when a test's fields drop in order).
    master: Option<i32>,
}

impl Postfix {
    /// Creates and starts an instance whose smtpd and non-SMTP (sendmail) mail both go
    /// through `milter` (e.g. `inet:127.0.0.1:PORT`).
    pub fn start(root: &Path, sink: &Sink, milter: &str) -> Postfix {
        Self::start_with(root, sink, milter, "")
    }

    /// Like [`Postfix::start`], with extra main.cf lines.
    pub fn start_with(root: &Path, sink: &Sink, milter: &str, extra_main_cf: &str) -> Postfix {
        require_postfix();
        let root = root.join("postfix");
        let etc = root.join("etc");
        let spool = root.join("spool");
        let log = root.join("log");
        for d in [&root, &etc, &spool, &log] {
            std::fs::create_dir_all(d).expect("postfix dirs");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let smtp_port = free_port();
        let main_cf = format!(
            "compatibility_level = 3.6
config_directory = {etc}
queue_directory = {spool}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.fanout-test.invalid
mydomain = fanout-test.invalid
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled in test instance
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink}
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_authorized_xclient_hosts = 127.0.0.0/8
biff = no
append_dot_mydomain = no
maillog_file_prefixes = {log}
maillog_file = {log}/maillog
queue_run_delay = 10s
minimal_backoff_time = 10s
maximal_backoff_time = 30s
smtpd_milters = {milter}
non_smtpd_milters = {milter}
milter_default_action = tempfail
milter_protocol = 6
milter_connect_timeout = 10s
milter_command_timeout = 10s
milter_content_timeout = 30s
{extra_main_cf}
",
            etc = etc.display(),
            spool = spool.display(),
            data = root.join("data").display(),
            log = log.display(),
            sink = sink.port,
        );
        std::fs::write(etc.join("main.cf"), main_cf).expect("main.cf");
        let mut master_cf = format!("127.0.0.1:{smtp_port} inet n - n - - smtpd\n");
        for line in [
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "local unix - n n - - local",
            "virtual unix - n n - - virtual",
            "lmtp unix - - n - - lmtp",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ] {
            let _ = writeln!(master_cf, "{line}");
        }
        std::fs::write(etc.join("master.cf"), master_cf).expect("master.cf");
        let mut pf = Postfix {
            etc,
            smtp_port,
            root,
            master: None,
        };
        let out = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&pf.etc)
            .arg("start")
            .output()
            .expect("run postfix start");
        assert!(
            out.status.success(),
            "postfix start failed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            pf.maillog()
        );
        wait_for("Postfix smtpd to listen", || {
            listening(smtp_port).then_some(())
        });
        pf.master = std::fs::read_to_string(pf.root.join("spool/pid/master.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        assert!(pf.master.is_some(), "Postfix wrote no master.pid");
        pf
    }

    /// Postfix's log of this instance.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.root.join("log/maillog")).unwrap_or_default()
    }

    /// `postqueue -j`: one JSON object per queued message.
    pub fn queue(&self) -> Vec<serde_json::Value> {
        let out = run(Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(&self.etc)
            .arg("-j"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("postqueue -j prints JSON"))
            .collect()
    }

    /// Queue ids in the hold queue.
    pub fn held(&self) -> Vec<String> {
        self.queue()
            .into_iter()
            .filter(|m| m["queue_name"] == "hold")
            .filter_map(|m| m["queue_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// The headers of a queued message (`postcat -hq`).
    pub fn postcat_headers(&self, queue_id: &str) -> String {
        let out = run(Command::new("/usr/sbin/postcat")
            .arg("-c")
            .arg(&self.etc)
            .arg("-hq")
            .arg(queue_id));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Submits a message with Postfix's sendmail(1), which goes through
    /// `non_smtpd_milters`.
    pub fn sendmail(&self, from: &str, rcpts: &[String], message: &[u8]) {
        let mut child = Command::new("/usr/sbin/sendmail")
            .arg("-C")
            .arg(&self.etc)
            .arg("-f")
            .arg(from)
            .arg("--")
            .args(rcpts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sendmail");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(message)
            .expect("write message to sendmail");
        let out = child.wait_with_output().expect("sendmail exit");
        assert!(
            out.status.success(),
            "sendmail failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let stopped = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let Some(master) = self.master else { return };
        let pid = nix::unistd::Pid::from_raw(master);
        // A zombie (reaped late by this sandbox's init) counts as gone.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{master}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
                .is_some_and(|r| !r.starts_with('Z'))
        };
        let gone_within = |d: Duration| {
            let start = Instant::now();
            while alive() {
                if start.elapsed() > d {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        };
        if stopped && gone_within(Duration::from_secs(10)) {
            return;
        }
        let _ = kill(pid, Signal::SIGTERM);
        if !gone_within(Duration::from_secs(5)) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// The built fanout-milter binary running as a child process.
pub struct Milter {
    /// The `listen` value it was started with.
    pub listen: String,
    /// Its configuration file.
    pub config: PathBuf,
    log: PathBuf,
    child: ChildGuard,
}

impl Milter {
    /// Writes `config_body` (everything but `[milter] listen`, which the harness adds
    /// at the top of `[milter]`) and starts the daemon on `listen`.
    /// Without a `[quarantine]` table the state goes to `root/state`.
    pub fn start(root: &Path, listen: &str, config_body: &str) -> Milter {
        let config = root.join("fanout-milter.toml");
        let mut text = with_listen(listen, config_body);
        if !text.contains("[quarantine]") {
            text.push_str(&format!(
                "\n[quarantine]\nstate_dir = \"{}\"\n",
                root.join("state").display()
            ));
        }
        std::fs::write(&config, text).expect("write config");
        Self::start_file(root, listen, config)
    }

    /// Starts the daemon with an existing configuration file.
    pub fn start_file(root: &Path, listen: &str, config: PathBuf) -> Milter {
        let log = root.join(format!("milter-{}.log", free_port()));
        let log_file = std::fs::File::create(&log).expect("milter log");
        let child = Command::new(env!("CARGO_BIN_EXE_fanout-milter"))
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start fanout-milter");
        let mut m = Milter {
            listen: listen.to_owned(),
            config,
            log,
            child: ChildGuard(Some(child)),
        };
        wait_for("fanout-milter to listen", || {
            if m.log().contains("listening") {
                return Some(());
            }
            if let Some(status) = m.child.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("fanout-milter exited early ({status}):\n{}", m.log());
            }
            None
        });
        m
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The decision log line for a queue id.
    pub fn decision(&self, queue_id: &str) -> String {
        wait_for(
            &format!("the milter's decision line for {queue_id}"),
            || {
                self.log()
                    .lines()
                    .find(|l| l.contains("decision") && l.contains(queue_id))
                    .map(str::to_owned)
            },
        )
    }

    /// The daemon's process id (0 once reaped).
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.pid()), sig).expect("kill");
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(nix::sys::signal::Signal::SIGTERM)
    }

    /// Sends `sig`, then waits for the exit status.
    pub fn stop_with(&mut self, sig: nix::sys::signal::Signal) -> ExitStatus {
        self.signal(sig);
        self.child.wait()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

/// Puts `listen = ...` into the `[milter]` table of a config body (adding the table
/// when the body has none).
pub fn with_listen(listen: &str, body: &str) -> String {
    let line = format!("listen = \"{listen}\"\n");
    match body.find("[milter]\n") {
        Some(i) => {
            let at = i + "[milter]\n".len();
            format!("{}{line}{}", &body[..at], &body[at..])
        }
        None => format!("[milter]\n{line}\n{body}"),
    }
}

/// An SMTP reply that refused the transaction.
#[derive(Debug)]
pub struct Refused {
    /// Reply code, e.g. 550.
    pub code: u16,
    /// The full error text.
    pub text: String,
}

/// Sends one message over SMTP to `127.0.0.1:port`; Ok with the final reply text, or
/// the refusal. An empty `from` is the null sender.
pub fn smtp_send(
    port: u16,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<String, Refused> {
    smtp_send_within(port, from, rcpts, message, DEADLINE)
}

/// Like [`smtp_send`], waiting at most `timeout` for each reply. A refusal without an
/// SMTP reply (connection refused or dropped, a timeout) has code 0.
pub fn smtp_send_within(
    port: u16,
    from: &str,
    rcpts: &[String],
    message: &[u8],
    timeout: Duration,
) -> Result<String, Refused> {
    use lettre::Transport;
    use lettre::address::Envelope;
    use lettre::transport::smtp::SmtpTransport;
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(timeout))
        .build();
    let envelope = Envelope::new(
        (!from.is_empty()).then(|| from.parse().expect("valid sender")),
        rcpts
            .iter()
            .map(|r| r.parse().expect("valid recipient"))
            .collect(),
    )
    .expect("envelope");
    match transport.send_raw(&envelope, message) {
        Ok(resp) => Ok(resp.message().collect::<Vec<_>>().join(" ")),
        Err(e) => {
            let code = e
                .status()
                .map(|c| c.to_string().parse().unwrap_or(0))
                .unwrap_or(0);
            Err(Refused {
                code,
                text: format!("{e}"),
            })
        }
    }
}

/// Sends one message with `XCLIENT LOGIN=login` first, as if the client had
/// authenticated as `login` (Postfix allows XCLIENT from 127.0.0.0/8 here); returns
/// the reply to the end of DATA. lettre has no XCLIENT, so this speaks SMTP itself.
pub fn smtp_send_as(
    port: u16,
    login: &str,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> String {
    use std::io::{BufRead, BufReader};
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Postfix");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut reply = |expect: &str| {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("SMTP reply");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
        assert!(all.starts_with(expect), "expected {expect}, got {all:?}");
        all
    };
    let mut send = |line: &str| writer.write_all(line.as_bytes()).expect("SMTP write");
    reply("220");
    send("EHLO client.corp.example\r\n");
    reply("250");
    send(&format!("XCLIENT LOGIN={login}\r\n"));
    reply("220");
    send("EHLO client.corp.example\r\n");
    reply("250");
    send(&format!("MAIL FROM:<{from}>\r\n"));
    reply("250");
    for r in rcpts {
        send(&format!("RCPT TO:<{r}>\r\n"));
        reply("250");
    }
    send("DATA\r\n");
    reply("354");
    let mut body = message.to_vec();
    body.extend_from_slice(b".\r\n");
    writer.write_all(&body).expect("SMTP write");
    let done = reply("250");
    writer.write_all(b"QUIT\r\n").expect("SMTP write");
    done
}

/// `n` recipients `user{i}@{domain}`.
pub fn rcpts(n: usize, domain: &str) -> Vec<String> {
    (0..n).map(|i| format!("user{i}@{domain}")).collect()
}

/// A small message with a unique subject and a body marker the sink waits for.
pub fn message(subject: &str, to: &str) -> Vec<u8> {
    format!(
        "From: Ann <ann@corp.example>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@corp.example>\r\n\r\nHello.\r\nEND-OF-TEST-BODY\r\n"
    )
    .into_bytes()
}

/// Fails loudly when redis-server is missing: the README's test command installs it.
pub fn require_redis() {
    assert!(
        Path::new(REDIS_SERVER).exists(),
        "{REDIS_SERVER} is missing: run scripts/test, which installs redis-server (apt-get) before the tests"
    );
}

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A private redis-server on a loopback port, nothing saved to disk; killed when dropped.
pub struct Redis {
    /// Its port.
    pub port: u16,
    child: ChildGuard,
}

impl Redis {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }

    /// Starts one on `port` (to bring a killed one back) and waits until it answers.
    pub fn start_on(port: u16) -> Redis {
        require_redis();
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--dir", "/tmp", "--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut r = Redis {
            port,
            child: ChildGuard(Some(child)),
        };
        wait_for("redis-server to answer PING", || {
            if let Some(status) = r.child.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("redis-server on port {port} exited early ({status})");
            }
            r.answers().then_some(())
        });
        r
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// True when it answers PING now.
    pub fn answers(&self) -> bool {
        use std::io::Read;
        let Ok(mut s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Sends it a signal (SIGSTOP to make it hang, SIGCONT to resume it).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.pid()), sig)
            .expect("signal redis-server");
    }

    /// Kills it with SIGKILL, as a crash would, and waits until it is gone.
    pub fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.wait();
    }
}

/// The policy of the reply-all storm tests, on one relay (e2e_storm) and on a fleet
/// (e2e_fleet): storms trip at the third reply from two senders to 5 or more.
pub const STORM_POLICY: &str = r#"
[domains]
internal = ["corp.example"]

[limits.envelope]
tag = 0
quarantine = 0
reject = 0

[hidden]
min_audience = 0

[storm]
min_audience = 5
min_messages = 3
min_senders = 2
window = "10m"
block_for = "6h"

[reply]
contact = "the Service Desk on 4242"
"#;

/// A reply-all from `from` with Subject and Message-ID `subject`, in the thread whose
/// root is `<thread@corp.example>`.
pub fn reply_all(from: &str, subject: &str, thread: &str, to: &[String]) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@corp.example>\r\n\
         In-Reply-To: <{thread}@corp.example>\r\nReferences: <{thread}@corp.example>\r\n\r\n\
         Me too.\r\nEND-OF-TEST-BODY\r\n",
        to.join(", ")
    )
    .into_bytes()
}

/// `fanout-milter quarantine worker` for the configuration `config`, as root, or, with
/// `wrapper`, under that command (e.g. setpriv with a unit's capabilities); killed when
/// dropped. Its log goes to a file in `dir`.
pub struct Worker {
    /// The process.
    pub child: ChildGuard,
    /// Its log file.
    pub log: PathBuf,
}

impl Worker {
    /// Starts it and waits until it says it is starting.
    pub fn start(dir: &Path, config: &Path, wrapper: &[String]) -> Worker {
        let log = dir.join(format!("worker-{}.log", free_port()));
        let file = std::fs::File::create(&log).expect("worker log");
        let binary = env!("CARGO_BIN_EXE_fanout-milter").to_owned();
        let mut argv: Vec<String> = wrapper.to_vec();
        argv.push(binary);
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .arg("-c")
            .arg(config)
            .args(["quarantine", "worker"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the worker");
        let mut w = Worker {
            child: ChildGuard(Some(child)),
            log,
        };
        wait_for("the worker to start", || {
            if let Some(status) = w.child.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the worker exited early ({status}):\n{}", w.log());
            }
            w.log().contains("worker starting").then_some(())
        });
        w
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its log line about request `id`.
    pub fn line(&self, id: i64) -> String {
        wait_for(&format!("the worker's line for request {id}"), || {
            self.log()
                .lines()
                .find(|l| l.contains(&format!("request={id} ")))
                .map(str::to_owned)
        })
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("kill");
        self.child.wait()
    }
}
