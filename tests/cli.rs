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

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/fanout-milter.service"
    ))
    .expect("unit file");
    let dir = scratch_dir("cli-unit");
    let path = dir.path().join("fanout-milter.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/fanout-milter", BIN)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed by scripts/test");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
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
