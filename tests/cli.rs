// SPDX-License-Identifier: GPL-3.0-or-later
//! The command line: check-config, explain, start-up errors, and the systemd unit.

mod common;

use common::{free_port, scratch_dir};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_fanout-milter");

fn fanout(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fanout-milter");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("exit")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `body` as the configuration, with the quarantine store inside `dir` unless
/// the body places it.
fn write_config(dir: &std::path::Path, body: &str) -> String {
    let path = dir.join("fanout-milter.toml");
    let mut body = body.to_owned();
    if !body.contains("[quarantine]") {
        body.push_str(&format!(
            "\n[quarantine]\nstate_dir = \"{}\"\n",
            dir.join("state").display()
        ));
    }
    std::fs::write(&path, body).expect("write config");
    path.display().to_string()
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/fanout-milter.toml");

#[test]
fn check_config_accepts_the_example_and_prints_effective_settings() {
    let out = fanout(&["check-config", "--config", EXAMPLE], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("configuration OK"));
    assert!(stdout.contains("listen = \"inet:127.0.0.1:7785\""));
    assert!(stdout.contains("[limits.envelope]"));
    assert!(stdout.contains("\n# [notices] all defaults\n"), "{stdout}");
}

#[test]
fn check_config_says_which_notices_are_overridden() {
    let dir = scratch_dir("cli-notices");
    let path = write_config(
        dir.path(),
        "[milter]\nlisten = \"inet:127.0.0.1:7785\"\n[domains]\ninternal = [\"corp.example\"]\n\
         [notices.withdrawn]\nsubject = \"Withdrawn as you asked: {subject}\"\n",
    );
    let out = fanout(&["check-config", "--config", &path], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("\n# [notices] overridden: withdrawn (the others are the defaults)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[notices.withdrawn]\nsubject = \"Withdrawn as you asked: {subject}\"\n"),
        "the effective text: {stdout}"
    );
}

#[test]
fn check_config_names_file_line_and_key_and_exits_1() {
    let dir = scratch_dir("cli-bad");
    let path = write_config(
        dir.path(),
        "[milter]\nlisten = \"inet:127.0.0.1:7785\"\n\n[limits.envelope]\ntag = 300\nquarantine = 200\n",
    );
    let out = fanout(&["check-config", "--config", &path], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{path}:6: limits.envelope.quarantine")),
        "{err}"
    );
    assert!(
        err.contains("domains.internal"),
        "every problem is reported: {err}"
    );

    let out = fanout(
        &["check-config", "--config", "/nonexistent/fanout.toml"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/fanout.toml: cannot read"));
}

#[test]
fn daemon_refuses_to_start_on_bad_config() {
    let dir = scratch_dir("cli-refuse");
    let path = write_config(
        dir.path(),
        "[milter]\nlisten = \"tcp:127.0.0.1:1\"\n[domains]\ninternal = [\"a.org\"]\n",
    );
    let out = fanout(&["--config", &path], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{path}:2: milter.listen")), "{err}");
    assert!(err.contains("inet:HOST:PORT"), "{err}");
}

#[test]
fn daemon_refuses_a_taken_port() {
    let dir = scratch_dir("cli-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let path = write_config(
        dir.path(),
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n[domains]\ninternal = [\"a.org\"]\n"
        ),
    );
    let out = fanout(&["run", "--config", &path], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on inet:127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("already in use"), "{err}");
}

#[test]
fn unix_socket_in_use_is_refused_and_a_stale_one_replaced() {
    let dir = scratch_dir("cli-unix");
    let sock = dir.path().join("m.sock");
    let path = write_config(
        dir.path(),
        &format!(
            "[milter]\nlisten = \"unix:{}\"\n[domains]\ninternal = [\"a.org\"]\n",
            sock.display()
        ),
    );
    // A socket file nobody listens on (left by a crash) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    assert!(sock.exists());
    let mut first = common::Milter::start_file(dir.path(), "", path.clone().into());
    // A second daemon on the same live socket must not steal it.
    let out = fanout(&["--config", &path], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already in use"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&sock).is_ok(),
        "the first daemon still serves"
    );
    assert!(first.stop().success());
}

#[test]
fn explain_prints_verdict_and_reasons() {
    let dir = scratch_dir("cli-explain");
    let path = write_config(
        dir.path(),
        "[domains]\ninternal = [\"corp.example\"]\n[limits.envelope]\ntag = 2\nquarantine = 3\nreject = 10\n",
    );
    let msg = b"From: ann@corp.example\r\nTo: a@corp.example, b@corp.example\r\nSubject: Budget\r\n\r\nbody\r\n";
    let out = fanout(
        &[
            "explain",
            "--config",
            &path,
            "--from",
            "ann@corp.example",
            "--rcpt",
            "a@corp.example",
            "--rcpt",
            "b@corp.example",
            "--rcpt",
            "c@partner.example",
            "--rcpt",
            "d@partner.example",
            "-",
        ],
        Some(msg),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("verdict: quarantine\n"), "{stdout}");
    assert!(
        stdout
            .contains("limits.envelope (quarantine): 4 envelope recipients >= quarantine level 3"),
        "{stdout}"
    );
    assert!(stdout.contains("external recipients: 2"), "{stdout}");
    assert!(stdout.contains("visible recipients (To/Cc): 2"), "{stdout}");

    let out = fanout(
        &[
            "explain",
            "--config",
            &path,
            "--json",
            "--from",
            "ann@corp.example",
            "--rcpt",
            "a@corp.example",
            "--rcpt",
            "b@corp.example",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(json["verdict"], "tag");
    assert_eq!(json["envelope_recipients"], 2);
    assert_eq!(json["visible_recipients"], 0);
    assert_eq!(json["audience"], 2);
    assert_eq!(json["external_recipients"], 0);
    assert_eq!(json["reasons"][0]["rule"], "limits.envelope");
    assert_eq!(
        json["reasons"][0]["message"],
        "2 envelope recipients >= tag level 2"
    );
}

#[test]
fn explain_and_milter_agree_on_a_reject() {
    let dir = scratch_dir("cli-explain-reject");
    let path = write_config(
        dir.path(),
        "[domains]\ninternal = [\"corp.example\"]\n[limits.envelope]\nreject = 3\ntag = 0\nquarantine = 0\n[reply]\ncontact = \"desk 42\"\n",
    );
    let rcpts: Vec<String> = (0..3).map(|i| format!("u{i}@corp.example")).collect();
    let mut args = vec![
        "explain",
        "--config",
        &path,
        "--json",
        "--from",
        "x@corp.example",
    ];
    for r in &rcpts {
        args.extend(["--rcpt", r.as_str()]);
    }
    let out = fanout(&args, None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(json["verdict"], "reject");
    let effect = json["effect"].as_str().expect("effect");
    assert!(effect.starts_with("refused: 550 5.7.1 "), "{effect}");
    assert!(effect.contains("desk 42"), "{effect}");
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let dir = scratch_dir("cli-sigint");
    let port = free_port();
    let path = write_config(
        dir.path(),
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n[domains]\ninternal = [\"a.org\"]\n"
        ),
    );
    let mut m = common::Milter::start_file(dir.path(), "", path.into());
    let status = m.stop_with(nix::sys::signal::Signal::SIGINT);
    assert!(status.success(), "{status}");
    assert!(
        m.log().contains("SIGINT received") && m.log().contains("shut down"),
        "{}",
        m.log()
    );
}

/// Reads one of the repo's unit files, writes it (with this build's binary) into a
/// scratch directory and checks it with `systemd-analyze verify`: its text, the
/// directory (removed on drop) and the written file.
fn verified_unit(name: &str) -> (String, tempfile::TempDir, std::path::PathBuf) {
    let unit = std::fs::read_to_string(format!("{}/systemd/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("unit file");
    let dir = scratch_dir(&format!("cli-unit-{name}"));
    let path = dir.path().join(name);
    std::fs::write(&path, unit.replace("/usr/local/bin/fanout-milter", BIN)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed by scripts/test");
    assert!(
        out.status.success(),
        "{name}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (unit, dir, path)
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let (unit, _dir, path) = verified_unit("fanout-milter.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{}",
        text(&out.stdout)
    );
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

/// A configuration with one virtual(5) source in `dir`, drift detection at factor 5
/// above 20 mailboxes, and the hidden rule off.
fn directory_config(dir: &std::path::Path, virtual_text: &str) -> String {
    let virtual_path = dir.join("virtual");
    std::fs::write(&virtual_path, virtual_text).expect("write the virtual file");
    write_config(
        dir,
        &format!(
            "[domains]\ninternal = [\"corp.example\"]\n\
             [hidden]\nmin_audience = 0\n\
             [drift]\nfactor = 5.0\nmin_audience = 20\n\
             [[directory]]\ntype = \"postfix-virtual\"\npath = \"{}\"\n",
            virtual_path.display()
        ),
    )
}

/// all@ reaches ward-a@ (3), ward-b@ (3, one shared with ward-a) and one outsider.
const WARDS: &str = "all@corp.example ward-a@corp.example, ward-b@corp.example, ext@partner.example\n\
                     ward-a@corp.example ann@corp.example, bob@corp.example, carl@corp.example\n\
                     ward-b@corp.example carl@corp.example, dora@corp.example, eve@corp.example\n";

#[test]
fn directory_lookup_prints_count_path_and_members() {
    let dir = scratch_dir("cli-lookup");
    let path = directory_config(dir.path(), WARDS);
    let out = fanout(
        &[
            "directory",
            "--config",
            &path,
            "lookup",
            "All@CORP.example",
            "--members",
            "2",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let virtual_path = dir.path().join("virtual").display().to_string();
    assert!(
        stdout.starts_with(&format!(
            "all@corp.example: list defined at {virtual_path}:1"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("\naudience: 6 mailboxes\n"), "{stdout}");
    assert!(stdout.contains("\nexternal: 1\n"), "{stdout}");
    assert!(stdout.contains("\nnested lists (2):\n"), "{stdout}");
    assert!(
        stdout.contains("\n  ward-a@corp.example (3 mailboxes)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n  ward-b@corp.example (3 mailboxes)\n"),
        "{stdout}"
    );
    let members = stdout.split("first members:\n").nth(1).expect("members");
    assert_eq!(
        members.lines().count(),
        3,
        "two members and a tail: {stdout}"
    );
    assert!(members.ends_with("  ... 4 more\n"), "{stdout}");

    // An address that is no list reaches itself.
    let out = fanout(
        &["directory", "--config", &path, "lookup", "zed@corp.example"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "zed@corp.example: not a list; reaches 1 address(es):\n  zed@corp.example\n"
    );
}

#[test]
fn explain_shows_the_expansion_behind_the_audience() {
    let dir = scratch_dir("cli-explain-expansion");
    let path = directory_config(dir.path(), WARDS);
    let out = fanout(
        &[
            "explain",
            "--config",
            &path,
            "--from",
            "x@corp.example",
            "--rcpt",
            "all@corp.example,ann@corp.example",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("envelope recipients: 2\n"), "{stdout}");
    assert!(
        stdout.contains("\naudience: 6\n"),
        "ann is counted once: {stdout}"
    );
    assert!(stdout.contains("external recipients: 1\n"), "{stdout}");
    assert!(
        stdout.contains("  list all@corp.example: 6 mailboxes (1 external, 2 nested lists)\n"),
        "{stdout}"
    );
}

#[test]
fn a_drifted_list_is_held_until_its_size_is_accepted() {
    let dir = scratch_dir("cli-drift");
    let path = directory_config(dir.path(), WARDS);
    let accept = |address: &str| fanout(&["directory", "--config", &path, "accept", address], None);
    let explain = || {
        let out = fanout(
            &[
                "explain",
                "--config",
                &path,
                "--json",
                "--from",
                "x@corp.example",
                "--rcpt",
                "ward-a@corp.example",
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON output")
    };

    let out = accept("ward-a@corp.example");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ward-a@corp.example: accepted size 3\n"),
        "{}",
        text(&out.stdout)
    );

    // The list's filter breaks: 3 yesterday, 40 today.
    let grown: Vec<String> = (0..40).map(|i| format!("m{i}@corp.example")).collect();
    std::fs::write(
        dir.path().join("virtual"),
        format!("ward-a@corp.example {}\n", grown.join(", ")),
    )
    .expect("rewrite");
    let json = explain();
    assert_eq!(json["verdict"], "quarantine", "{json}");
    assert_eq!(json["reasons"][0]["rule"], "drift");
    let reason = json["reasons"][0]["message"].as_str().expect("message");
    assert!(
        reason.contains("list ward-a@corp.example grew from 3 to 40 recipients"),
        "{reason}"
    );
    let out = fanout(
        &[
            "directory",
            "--config",
            &path,
            "lookup",
            "ward-a@corp.example",
        ],
        None,
    );
    assert!(
        text(&out.stdout).contains("DRIFTED: accepted size 3, now 40"),
        "{}",
        text(&out.stdout)
    );

    let out = accept("ward-a@corp.example");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ward-a@corp.example: accepted size 40 (was 3)\n"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        explain()["verdict"],
        "accept",
        "accepted: the list flows again"
    );

    let out = accept("nobody@corp.example");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nobody@corp.example is not a list"),
        "{}",
        text(&out.stderr)
    );
}

/// `[exempt] senders` match the SASL login: a client logged in as someone else who
/// writes an exempt address in MAIL FROM is not exempt.
#[test]
fn explain_a_forged_envelope_sender_is_not_exempt() {
    let dir = scratch_dir("cli-forged-exempt");
    let path = write_config(
        dir.path(),
        "[domains]\ninternal = [\"example.org\"]\n\
         [limits.envelope]\ntag = 2\nquarantine = 3\nreject = 10\n\
         [exempt]\nsenders = [\"bulk-notices@example.org\"]\n",
    );
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--config",
            &path,
            "--json",
            "--from",
            "bulk-notices@example.org",
            "--rcpt",
            "a@example.org,b@example.org,c@example.org,d@example.org",
        ];
        args.extend_from_slice(extra);
        let out = fanout(&args, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON output")
    };
    let forged = explain(&["--sasl-login", "mallory"]);
    assert_eq!(forged["verdict"], "quarantine", "{forged}");
    assert_eq!(forged["exempt_by"], serde_json::Value::Null, "{forged}");
    let no_login = explain(&[]);
    assert_eq!(
        no_login["verdict"], "quarantine",
        "the envelope sender alone is not trusted: {no_login}"
    );
    let owner = explain(&["--sasl-login", "bulk-notices@example.org"]);
    assert_eq!(owner["verdict"], "accept", "{owner}");
    assert_eq!(owner["exempt_by"], "bulk-notices@example.org");

    // Trusting the envelope sender of mail without a login is explicit (the same
    // file, rewritten).
    write_config(
        dir.path(),
        "[domains]\ninternal = [\"example.org\"]\n\
         [limits.envelope]\ntag = 2\nquarantine = 3\nreject = 10\n\
         [exempt]\nenvelope_senders = [\"bulk-notices@example.org\"]\n",
    );
    let trusted = explain(&[]);
    assert_eq!(trusted["verdict"], "accept", "{trusted}");
    let forged = explain(&["--sasl-login", "mallory"]);
    assert_eq!(forged["verdict"], "quarantine", "{forged}");
}

/// The shipped defaults with a department list of 300: a notice with the list in To
/// passes; the same list Bcc'd (To: the sender) is a hidden expansion.
#[test]
fn explain_a_department_notice_passes_with_the_shipped_defaults() {
    let dir = scratch_dir("cli-dept-notice");
    let members: Vec<String> = (0..300).map(|i| format!("n{i}@example.org")).collect();
    let virtual_path = dir.path().join("virtual");
    std::fs::write(
        &virtual_path,
        format!(
            "nursing@example.org {m}\nstraße@example.org {m}\n",
            m = members.join(", ")
        ),
    )
    .expect("virtual");
    let shipped = std::fs::read_to_string(EXAMPLE).expect("example config");
    let path = write_config(
        dir.path(),
        &format!(
            "{}\n[[directory]]\ntype = \"postfix-virtual\"\npath = \"{}\"\n",
            shipped
                .replace(
                    "state_dir = \"/var/lib/fanout-milter\"",
                    &format!("state_dir = \"{}\"", dir.path().join("state").display())
                )
                .replace(
                    "# recipient_delimiter = \"+\"",
                    "recipient_delimiter = \"+\""
                ),
            virtual_path.display()
        ),
    );
    let explain = |rcpts: &str, to: &str| {
        let msg = format!("From: n7@example.org\r\nTo: {to}\r\nSubject: Rota\r\n\r\nbody\r\n");
        let out = fanout(
            &[
                "explain",
                "--config",
                &path,
                "--json",
                "--from",
                "n7@example.org",
                "--sasl-login",
                "n7",
                "--rcpt",
                rcpts,
                "-",
            ],
            Some(msg.as_bytes()),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON output")
    };
    let notice = explain("nursing@example.org", "nursing@example.org");
    assert_eq!(notice["verdict"], "accept", "{notice}");
    assert_eq!(notice["audience"], 300);
    assert_eq!(notice["unseen_audience"], 0);

    let bcc = explain("n7@example.org,nursing@example.org", "n7@example.org");
    assert_eq!(bcc["verdict"], "quarantine", "{bcc}");
    assert_eq!(bcc["reasons"][0]["rule"], "hidden", "{bcc}");

    // The envelope and the header name the same list in two forms Postfix resolves
    // alike: an address extension, a case fold. The members see the list: not hidden.
    for (rcpt, to) in [
        ("nursing+rota@example.org", "nursing@example.org"),
        ("nursing@example.org", "Nursing+Rota@example.org"),
        ("straße@example.org", "STRASSE@example.org"),
        ("STRASSE@example.org", "straße@example.org"),
    ] {
        let named = explain(rcpt, to);
        assert_eq!(named["verdict"], "accept", "{rcpt} / To {to}: {named}");
        assert_eq!(named["audience"], 300, "{rcpt} / To {to}: {named}");
        assert_eq!(named["unseen_audience"], 0, "{rcpt} / To {to}: {named}");
    }
}

#[test]
fn directory_accept_takes_a_list_address_or_a_source_not_both() {
    let dir = scratch_dir("cli-accept-source");
    let path = directory_config(dir.path(), WARDS);
    let both = fanout(
        &[
            "directory",
            "--config",
            &path,
            "accept",
            "all@corp.example",
            "--source",
            "corp",
        ],
        None,
    );
    assert_eq!(both.status.code(), Some(2), "{}", text(&both.stderr));
    let neither = fanout(&["directory", "--config", &path, "accept"], None);
    assert_eq!(neither.status.code(), Some(2), "{}", text(&neither.stderr));
    // --source goes to the daemon through its admin socket; none runs here.
    let out = fanout(
        &["directory", "--config", &path, "accept", "--source", "corp"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("admin socket"),
        "{}",
        text(&out.stderr)
    );
}

/// A file outside the state directory a compromised daemon would like root to write.
fn precious(dir: &std::path::Path) -> (std::path::PathBuf, std::fs::Metadata) {
    let target = dir.join("ld.so.preload");
    std::fs::write(&target, "precious").expect("write the target");
    let meta = std::fs::metadata(&target).expect("stat");
    (target, meta)
}

fn untouched(target: &std::path::Path, before: &std::fs::Metadata) {
    use std::os::unix::fs::MetadataExt;
    let after = std::fs::metadata(target).expect("stat");
    assert_eq!(std::fs::read(target).expect("read"), b"precious");
    assert_eq!(
        (after.uid(), after.gid(), after.mode(), after.mtime()),
        (before.uid(), before.gid(), before.mode(), before.mtime()),
        "the link target is untouched"
    );
}

#[test]
fn root_commands_refuse_links_planted_in_the_state_directory() {
    let dir = scratch_dir("cli-planted");
    let path = directory_config(dir.path(), WARDS);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let (target, before) = precious(dir.path());

    // The quarantine database replaced by a link.
    std::os::unix::fs::symlink(&target, state.join("quarantine.sqlite")).expect("plant");
    let out = fanout(&["quarantine", "--config", &path, "list"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("quarantine.sqlite: a symbolic link in the state directory"),
        "{}",
        text(&out.stderr)
    );
    untouched(&target, &before);
    std::fs::remove_file(state.join("quarantine.sqlite")).expect("unplant");

    // Its write-ahead log replaced by a link, once the database exists.
    let out = fanout(&["quarantine", "--config", &path, "list"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = std::fs::remove_file(state.join("quarantine.sqlite-wal"));
    std::os::unix::fs::symlink(&target, state.join("quarantine.sqlite-wal")).expect("plant");
    let out = fanout(&["quarantine", "--config", &path, "sweep"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("quarantine.sqlite-wal: a symbolic link"),
        "{}",
        text(&out.stderr)
    );
    untouched(&target, &before);

    // The accepted list sizes replaced by a link: directory accept neither reads nor
    // writes through it.
    std::os::unix::fs::symlink(&target, state.join("list-sizes.json")).expect("plant");
    let out = fanout(
        &[
            "directory",
            "--config",
            &path,
            "accept",
            "ward-a@corp.example",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("list-sizes.json: a symbolic link"),
        "{}",
        text(&out.stderr)
    );
    untouched(&target, &before);
}

#[test]
fn root_commands_refuse_a_state_directory_of_another_account() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root, as the admin commands run");
        return;
    }
    let dir = scratch_dir("cli-owner");
    let path = directory_config(dir.path(), WARDS);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown");
    for args in [
        &["quarantine", "--config", &path, "list"][..],
        &[
            "directory",
            "--config",
            &path,
            "accept",
            "ward-a@corp.example",
        ][..],
    ] {
        let out = fanout(args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("the state directory is owned by uid 65534")
                && err.contains("not by root or the daemon's account \"fanout-milter\""),
            "{args:?}: {err}"
        );
        assert!(
            std::fs::read_dir(&state).expect("read").next().is_none(),
            "{args:?}: nothing created in it"
        );
    }
}

#[test]
fn sweep_unit_verifies_and_is_sandboxed() {
    let (unit, _dir, path) = verified_unit("fanout-milter-sweep.service");
    // Root, but writing only the state directory and the Postfix queue, on loopback
    // only, with the capabilities postsuper, postcat and postdrop need (exercised in
    // tests/e2e_quarantine.rs).
    for line in [
        "ProtectSystem=strict",
        "ReadWritePaths=-/var/lib/fanout-milter -/var/spool/postfix",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_DAC_OVERRIDE CAP_CHOWN",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=30"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success(),
        "exposure above 3.0:\n{}",
        text(&out.stdout)
    );
}

#[test]
fn worker_unit_verifies_and_is_sandboxed() {
    let (unit, _dir, path) = verified_unit("fanout-milter-worker.service");
    // Root, writing only the state directory and the Postfix queue, with no network
    // at all and the capabilities postsuper and postdrop need (exercised in
    // tests/e2e_worker.rs); SIGTERM lets the request in progress finish.
    for line in [
        "ExecStart=/usr/local/bin/fanout-milter quarantine worker --config /etc/fanout-milter/fanout-milter.toml",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ReadWritePaths=-/var/lib/fanout-milter -/var/spool/postfix",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_DAC_OVERRIDE CAP_CHOWN",
        "RestrictAddressFamilies=AF_UNIX",
        "PrivateNetwork=yes",
        "IPAddressDeny=any",
        "PrivateTmp=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{}",
        text(&out.stdout)
    );
}

/// Credentials of the Redis and webhook URLs, in every form a URL carries them.
const SECRETS: [&str; 3] = ["s3cret", "SECRET", "tok3n"];

#[test]
fn check_config_prints_no_url_credential() {
    let dir = scratch_dir("cli-secrets");
    let webhook = "https://hooks.example/services/T0/B0/SECRET?token=tok3n";
    for url in [
        "redis://:s3cret@10.0.0.5:6379/0",
        "redis+unix:///run/redis.sock?pass=s3cret&db=2",
        "redis://user:s3cret@host",
        "rediss://user:s3cret@host",
        // Passwords holding URL delimiters.
        "redis://user:pa/s3cret@127.0.0.1:6379/0",
        "redis://:s3cret#s3cret@127.0.0.1:6379/0",
        "redis://:s3cret?s3cret@127.0.0.1:6379/0",
        "redis://:s3cret@s3cret@127.0.0.1:6379/0",
        "redis://:s3cret%2Fs3cret@127.0.0.1:6379/0",
        "redis://:s3cret s3cret@127.0.0.1:6379/0",
        "redis//:s3cret@127.0.0.1:6379/0",
    ] {
        let path = write_config(
            dir.path(),
            &format!(
                "[domains]\ninternal = [\"a.org\"]\n[state]\nbackend = \"redis\"\nurl = \"{url}\"\n\
                 [notify]\nwebhook = \"{webhook}\"\n"
            ),
        );
        let out = fanout(&["check-config", "--config", &path], None);
        let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
        for secret in SECRETS {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        assert!(
            printed.contains("\"https://hooks.example/***?token=***\"") || !out.status.success(),
            "{printed}"
        );
        if url.starts_with("rediss") {
            assert!(out.status.success(), "TLS is built in: {printed}");
            assert!(printed.contains("rediss://user:***@host"), "{printed}");
        }
    }
    // Sentinels' URLs too.
    let path = write_config(
        dir.path(),
        "[domains]\ninternal = [\"a.org\"]\n[state]\nbackend = \"redis\"\nurl = \"redis://:s3cret@mymaster/\"\n\
         [state.sentinel]\nmaster = \"mymaster\"\nurls = [\"redis://:s3cret@10.0.0.1:26379\", \"redis://u:s3cret@10.0.0.2:26379\"]\n",
    );
    let out = fanout(&["check-config", "--config", &path], None);
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains("s3cret"), "s3cret printed:\n{printed}");
    assert!(
        printed.contains("\"redis://u:***@10.0.0.2:26379\""),
        "{printed}"
    );
}

/// The daemon logs neither the Redis password when Redis is down nor the webhook
/// token when the webhook fails.
#[test]
fn daemon_logs_no_url_credential_when_redis_and_the_webhook_fail() {
    let dir = scratch_dir("cli-secret-log");
    let (dead_redis, dead_hook) = (free_port(), free_port());
    let mut m = common::Milter::start(
        dir.path(),
        &format!("inet:127.0.0.1:{}", free_port()),
        &format!(
            "[domains]\ninternal = [\"a.org\"]\n\
             [state]\nbackend = \"redis\"\nurl = \"redis://user:s3cret@127.0.0.1:{dead_redis}/0?x=tok3n\"\n\
             [notify]\ninterval = \"1s\"\nwebhook_timeout = \"1s\"\n\
             webhook = \"http://127.0.0.1:{dead_hook}/services/T0/B0/SECRET?token=tok3n\"\n"
        ),
    );
    let log = common::wait_for("the failed webhook post of the state-down alert", || {
        let log = m.log();
        log.contains("alert digest webhook failed").then_some(log)
    });
    m.stop();
    assert!(log.contains("shared state unreachable"), "{log}");
    assert!(
        log.contains(&format!("127.0.0.1:{dead_hook}/***?token=***")),
        "{log}"
    );
    for secret in SECRETS {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}

#[test]
fn a_listen_address_other_hosts_reach_is_warned_about() {
    let dir = scratch_dir("cli-exposed");
    for (listen, warned) in [
        ("inet:0.0.0.0:7785", true),
        ("inet:192.0.2.10:7785", true),
        ("inet:127.0.0.1:7785", false),
        ("unix:/run/fanout-milter/milter.sock", false),
    ] {
        let path = write_config(
            dir.path(),
            &format!("[milter]\nlisten = \"{listen}\"\n[domains]\ninternal = [\"a.org\"]\n"),
        );
        let out = fanout(&["check-config", "--config", &path], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert_eq!(
            err.contains("warning:") && err.contains("no authentication"),
            warned,
            "{listen}: {err}"
        );
    }
}

/// Outside systemd (no UMask=, umask 022 here) the daemon still creates its state
/// directory and every file in it for its own user only.
#[test]
fn the_daemon_creates_its_state_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let dir = scratch_dir("cli-umask");
    let mut m = common::Milter::start(
        dir.path(),
        &format!("inet:127.0.0.1:{}", free_port()),
        "[domains]\ninternal = [\"a.org\"]\n\
         [[list]]\naddress = \"team@a.org\"\nmembers = [\"x@a.org\", \"y@a.org\"]\n",
    );
    let state = dir.path().join("state");
    let mode = |name: &str| {
        std::fs::metadata(state.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700, "the state directory");
    for file in ["quarantine.sqlite", "list-sizes.json"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    let log = m.log();
    m.stop();
    assert!(
        !log.contains("no authentication"),
        "127.0.0.1 is not warned about: {log}"
    );
}

/// The README's unix socket inside Postfix's chroot can be bound under the unit's
/// `ProtectSystem=strict`: its directory is one of the unit's `ReadWritePaths` (or the
/// runtime directory), and the unit with it verifies. Memory and tasks are bounded.
#[test]
fn the_documented_socket_layout_is_writable_in_the_sandbox() {
    let readme = include_str!("../README.md");
    let unit = include_str!("../systemd/fanout-milter.service");
    let writable: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ReadWritePaths="))
        .flat_map(str::split_whitespace)
        .map(|p| p.trim_start_matches('-'))
        .chain(
            unit.lines()
                .filter_map(|l| l.strip_prefix("RuntimeDirectory="))
                .map(|_| "/run/fanout-milter"),
        )
        .collect();
    let sockets: Vec<&str> = readme
        .match_indices("unix:/")
        .filter(|(i, _)| !readme[..*i].ends_with('+'))
        .map(|(i, _)| {
            let rest = &readme[i + "unix:".len()..];
            &rest[..rest.find(['`', '"', ' ', ')', '\n']).unwrap_or(rest.len())]
        })
        .filter(|path| path.ends_with(".sock") && !path.starts_with("/fanout-milter/"))
        .collect();
    assert!(
        sockets.contains(&"/var/spool/postfix/fanout-milter/milter.sock"),
        "{sockets:?}"
    );
    for socket in sockets {
        let dir = std::path::Path::new(socket).parent().unwrap();
        assert!(
            writable.iter().any(|w| dir.starts_with(w)),
            "{socket} is not writable under ProtectSystem=strict: {writable:?}"
        );
    }
    for bound in ["MemoryMax=", "TasksMax="] {
        assert!(
            unit.lines().any(|l| l.starts_with(bound)),
            "{bound} missing"
        );
    }
    assert!(
        readme.contains(
            "install -d -o fanout-milter -g postfix -m 2750 /var/spool/postfix/fanout-milter"
        ),
        "the README creates the socket directory setgid postfix"
    );
    assert!(
        !readme.contains("shared group"),
        "Postfix never shares the group that reads the secrets"
    );
    verified_unit("fanout-milter.service");
}

/// The README's socket directory: setgid `postfix`, so the socket the daemon creates
/// gets group `postfix` and, with `socket_mode = "0660"`, Postfix may connect, though
/// the daemon's umask keeps everything else private.
#[test]
fn a_socket_in_a_setgid_postfix_directory_belongs_to_postfix() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let postfix = nix::unistd::Group::from_name("postfix")
        .expect("group database")
        .expect("postfix is installed by scripts/test");
    let dir = scratch_dir("cli-socket-group");
    let sockets = dir.path().join("fanout-milter");
    std::fs::create_dir(&sockets).unwrap();
    nix::unistd::chown(&sockets, None, Some(postfix.gid)).expect("chgrp postfix");
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o2750)).unwrap();
    let socket = sockets.join("milter.sock");
    let mut m = common::Milter::start(
        dir.path(),
        &format!("unix:{}", socket.display()),
        "[milter]\nsocket_mode = \"0660\"\n[domains]\ninternal = [\"a.org\"]\n",
    );
    let meta = std::fs::metadata(&socket).expect("the socket");
    m.stop();
    assert_eq!(meta.gid(), postfix.gid.as_raw(), "group postfix");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
}

/// `[state] password_file`: the Redis password lives in a file only the daemon reads,
/// not in the configuration; the daemon authenticates with it.
#[test]
fn the_redis_password_can_come_from_a_file() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let redis = common::Redis::start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(b"CONFIG SET requirepass s3cretpw\r\n").unwrap();
    let mut ok = [0u8; 5];
    s.read_exact(&mut ok).expect("answer");
    assert_eq!(&ok, b"+OK\r\n");
    let dir = scratch_dir("cli-redis-password");
    let secret = dir.path().join("redis.secret");
    std::fs::write(&secret, "s3cretpw\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let body = format!(
        "[domains]\ninternal = [\"a.org\"]\n[state]\nbackend = \"redis\"\n\
         url = \"{}\"\npassword_file = \"redis.secret\"\n",
        redis.url()
    );
    let path = write_config(dir.path(), &body);
    let out = fanout(&["check-config", "--config", &path], None);
    assert!(
        !out.status.success(),
        "a world-readable password file is refused"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{path}:6: state.password_file")) && err.contains("chmod"),
        "{err}"
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = fanout(&["check-config", "--config", &path], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("s3cretpw"));

    let mut m = common::Milter::start(
        dir.path(),
        &format!("inet:127.0.0.1:{}", free_port()),
        &body,
    );
    let log = common::wait_for("the daemon to reach redis", || {
        let log = m.log();
        (log.contains("redis answers") || log.contains("unreachable")).then_some(log)
    });
    m.stop();
    assert!(log.contains("redis answers"), "{log}");
    assert!(!log.contains("s3cretpw"), "{log}");
}

/// An address extension (`all-staff+x@`) reaches the list as Postfix expands it: the
/// same verdict and audience as the list itself, the restricted-list rule included,
/// with the delimiter from the file or, when postconf cannot be read, the documented
/// fallback "+"; `check-config` prints the effective value.
#[test]
fn explain_resolves_address_extensions_like_postfix() {
    let dir = scratch_dir("cli-extension");
    let body = |extra: &str| {
        format!(
            "[domains]\ninternal = [\"example.org\"]\n\
             [postfix]\nconfig_directory = \"{}\"\n{extra}\
             [[list]]\naddress = \"all-staff@example.org\"\nmember_count = 840000\n\
             [[list]]\naddress = \"everyone@example.org\"\nmember_count = 840000\n\
             [[list]]\naddress = \"board@example.org\"\nmember_count = 12\n\
             allowed_senders = [\"ceo@example.org\"]\n",
            dir.path().join("no-postfix-here").display()
        )
    };
    let explain = |path: &str, rcpt: &str| -> serde_json::Value {
        let out = fanout(
            &[
                "explain",
                "--config",
                path,
                "--json",
                "--from",
                "ann@example.org",
                "--rcpt",
                rcpt,
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON output")
    };
    for (extra, list, forms) in [
        (
            "",
            "all-staff@example.org",
            &["all-staff+x@example.org", "All-Staff+Tag@EXAMPLE.org"][..],
        ),
        // Each character of a multi-character delimiter splits, at the first one met
        // (so with "-" in the set, all-staff+x@ would be looked up as all@, as Postfix
        // does: everyone@ is the list here).
        (
            "recipient_delimiter = \"-+\"\n",
            "everyone@example.org",
            &[
                "everyone+x@example.org",
                "everyone-x@example.org",
                "everyone-x+y@example.org",
            ][..],
        ),
    ] {
        let path = write_config(dir.path(), &body(extra));
        let plain = explain(&path, list);
        assert_eq!(plain["verdict"], "reject", "{plain}");
        assert_eq!(plain["audience"], 840_000, "{plain}");
        for rcpt in forms {
            let tagged = explain(&path, rcpt);
            assert_eq!(tagged["verdict"], plain["verdict"], "{rcpt}: {tagged}");
            assert_eq!(tagged["audience"], plain["audience"], "{rcpt}: {tagged}");
            assert_eq!(tagged["reasons"], plain["reasons"], "{rcpt}: {tagged}");
        }
        let restricted = explain(&path, "board+x@example.org");
        assert_ne!(
            restricted["verdict"], "accept",
            "restricted list: {restricted}"
        );
        assert_eq!(
            restricted["reasons"],
            explain(&path, "board@example.org")["reasons"],
            "{restricted}"
        );
    }

    let path = write_config(dir.path(), &body(""));
    let out = fanout(&["check-config", "--config", &path], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "# [postfix] recipient_delimiter: fallback \"+\": postconf could not be read"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nrecipient_delimiter = \"+\"\n"),
        "{stdout}"
    );
    let path = write_config(dir.path(), &body("recipient_delimiter = \"-+\"\n"));
    let stdout = text(&fanout(&["check-config", "--config", &path], None).stdout);
    assert!(
        stdout.contains("# [postfix] recipient_delimiter: from [postfix] recipient_delimiter"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nrecipient_delimiter = \"-+\"\n"),
        "{stdout}"
    );
}

/// A quoted local part, a comment and a bare name are the list to Postfix (it looks up
/// the address in its internal form, `$myorigin` appended to a bare name), so explain
/// counts them as the list; `check-config` prints the effective myorigin.
#[test]
fn explain_resolves_quoted_commented_and_bare_addresses_like_postfix() {
    let dir = scratch_dir("cli-canonical");
    let path = write_config(
        dir.path(),
        &format!(
            "[domains]\ninternal = [\"example.org\"]\n\
             [postfix]\nconfig_directory = \"{}\"\nmyorigin = \"Example.ORG\"\n\
             [[list]]\naddress = \"all-staff@example.org\"\nmember_count = 3000\n",
            dir.path().join("no-postfix-here").display()
        ),
    );
    let explain = |rcpt: &str| -> serde_json::Value {
        let out = fanout(
            &[
                "explain",
                "--config",
                &path,
                "--json",
                "--from",
                "ann@example.org",
                "--rcpt",
                rcpt,
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON output")
    };
    let plain = explain("all-staff@example.org");
    assert_eq!(plain["audience"], 3000, "{plain}");
    assert_eq!(plain["verdict"], "quarantine", "{plain}");
    for rcpt in [
        "\"all-staff\"@example.org",
        "<\"all-staff\"@example.org>",
        "all-staff(c)@example.org",
        "\\all-staff@example.org",
        "all-staff",
        "<All-Staff>",
        "<@relay.example:\"all-staff\"@example.org>",
    ] {
        let form = explain(rcpt);
        assert_eq!(form["verdict"], plain["verdict"], "{rcpt}: {form}");
        assert_eq!(form["audience"], 3000, "{rcpt}: {form}");
        assert_eq!(
            form["lists"][0]["address"], "all-staff@example.org",
            "{rcpt}: {form}"
        );
    }
    let stdout = text(&fanout(&["check-config", "--config", &path], None).stdout);
    assert!(
        stdout.contains("# [postfix] myorigin: from [postfix] myorigin"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nmyorigin = \"example.org\"\n"),
        "{stdout}"
    );
}

/// `directory lookup` says which key an extended address was found under.
#[test]
fn directory_lookup_names_the_key_an_extension_finds() {
    let dir = scratch_dir("cli-lookup-extension");
    let path = directory_config(dir.path(), WARDS);
    let out = fanout(
        &[
            "directory",
            "--config",
            &path,
            "lookup",
            "all+news@corp.example",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(
            "all+news@corp.example: looked up as all@corp.example (recipient_delimiter \"+\")"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("\naudience: 6 mailboxes\n"), "{stdout}");
}

/// `[[scope]] senders` match the SASL login first, so MAIL FROM cannot take
/// authenticated mail out of the scope its login is named in; a login no scope names is
/// scoped by its envelope sender, which can only add a restriction.
#[test]
fn explain_a_scope_is_picked_by_the_login_not_the_envelope_sender() {
    let dir = scratch_dir("cli-scope-login");
    let path = directory_config(dir.path(), WARDS);
    let base = std::fs::read_to_string(&path).expect("read the config");
    let scope = |senders: &str| {
        std::fs::write(
            &path,
            format!(
                "{base}[[scope]]\nsenders = [{senders}]\nmay_reach = [\"corp.example\"]\n\
                 action = \"quarantine\"\n"
            ),
        )
        .expect("write the config");
    };
    let explain = |from: &str, login: Option<&str>| {
        let mut args = vec![
            "explain",
            "--config",
            &path,
            "--json",
            "--from",
            from,
            "--rcpt",
            "all@corp.example",
        ];
        if let Some(login) = login {
            args.extend_from_slice(&["--sasl-login", login]);
        }
        args.push("-");
        let msg = "From: ann@corp.example\r\nTo: all@corp.example\r\nSubject: Rota\r\n\r\nbody\r\n";
        let out = fanout(&args, Some(msg.as_bytes()));
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON output")
    };
    scope("\"*@corp.example\"");
    let no_login = explain("ann@corp.example", None);
    assert_eq!(no_login["verdict"], "quarantine", "{no_login}");
    assert_eq!(no_login["reasons"][0]["rule"], "scope", "{no_login}");
    let named = explain("x@partner.example", Some("ann@corp.example"));
    assert_eq!(
        named["verdict"], "quarantine",
        "a forged MAIL FROM does not take a login out of its scope: {named}"
    );
    let bare = explain("ann@corp.example", Some("uid-7"));
    assert_eq!(
        bare["verdict"], "quarantine",
        "a login no scope names is still scoped by its MAIL FROM (that only restricts): {bare}"
    );
    scope("\"*@corp.example\", \"uid-*\"");
    let bare = explain("x@partner.example", Some("uid-7"));
    assert_eq!(
        bare["verdict"], "quarantine",
        "bare logins are named: {bare}"
    );
    assert_eq!(bare["reasons"][0]["rule"], "scope", "{bare}");
}

/// An error quoting a table file shows its control characters as escapes, never raw
/// on root's terminal.
#[test]
fn a_control_character_in_the_virtual_file_is_reported_escaped() {
    let dir = scratch_dir("cli-parse-escape");
    let path = directory_config(
        dir.path(),
        "all@corp.example ann@corp.example, b\u{1b}]0;pwned\u{7}\u{1b}[2J@corp.example\n",
    );
    let out = fanout(
        &["directory", "--config", &path, "lookup", "all@corp.example"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("control character in \"b\\x1B]0;pwned\\x07\\x1B[2J@corp.example\""),
        "{stderr}"
    );
    assert!(
        !out.stderr.iter().any(|&b| b == 0x1b || b == 0x07),
        "{stderr:?}"
    );
}
