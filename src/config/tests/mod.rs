// SPDX-License-Identifier: GPL-3.0-or-later
//! Loader tests: one per error class, each checking that the rendered message names the
//! file, the line and the dotted key; plus the defaults, the shipped example and reloads.

use super::*;

mod fleet_store;
mod ldap;
mod notices;
mod quarantine;
mod review;
mod state;

const FILE: &str = "/etc/fanout-milter/fanout-milter.toml";

/// The shipped example configuration.
const EXAMPLE: &str = include_str!("../../../conf/fanout-milter.toml");

fn load_str(src: &str) -> Result<Config, ConfigError> {
    parse(src, Path::new(FILE))
}

fn refused(src: &str) -> ConfigError {
    match load_str(src) {
        Ok(_) => panic!("configuration was accepted:\n{src}"),
        Err(e) => e,
    }
}

/// Asserts that `src` is refused with exactly one problem, at `line`, about `key`, whose
/// message contains `needle`; the rendered text must start with `FILE:line:` and name the
/// key. Returns the rendered text.
fn assert_one_problem(src: &str, line: usize, key: &str, needle: &str) -> String {
    let err = refused(src);
    let text = err.to_string();
    assert_eq!(err.problems().len(), 1, "one problem expected: {text}");
    let p = &err.problems()[0];
    assert_eq!(p.line, Some(line), "{text}");
    assert_eq!(p.key, key, "{text}");
    assert!(p.message.contains(needle), "{needle:?} not in {text}");
    assert!(
        text.starts_with(&format!("{FILE}:{line}:")),
        "file and line 'fanout-milter.toml:{line}' missing: {text}"
    );
    assert!(
        text.contains(&format!(": {key}: ")),
        "key {key} missing: {text}"
    );
    assert!(text.contains(needle), "{needle:?} not in {text}");
    assert!(matches!(err.kind, ConfigErrorKind::Invalid(_)));
    assert_eq!(err.file, Path::new(FILE));
    text
}

/// The `[domains]` table (two lines) that the section tests put before their own text,
/// so line numbers there count from the top of the whole file.
const DOMAINS: &str = "[domains]\ninternal = [\"corp.example\"]\n";

/// Parses `src` after [`DOMAINS`].
fn load_after_domains(src: &str) -> Result<Config, ConfigError> {
    load_str(&format!("{DOMAINS}{src}"))
}

/// [`assert_one_problem`] for `src` after [`DOMAINS`].
fn refused_after_domains(src: &str, line: usize, key: &str, needle: &str) {
    assert_one_problem(&format!("{DOMAINS}{src}"), line, key, needle);
}

/// Asserts a semantic problem (no column) by exact equality of the structured problem.
fn assert_semantic(src: &str, line: usize, key: &str, message: &str) {
    let text = assert_one_problem(src, line, key, message);
    assert_eq!(
        refused(src).problems(),
        [Problem {
            line: Some(line),
            column: None,
            key: key.into(),
            message: message.into(),
        }]
    );
    assert_eq!(text, format!("{FILE}:{line}: {key}: {message}"));
}

// ---------------------------------------------------------------- syntax (serde/toml)

#[test]
fn toml_syntax_error_names_file_line_and_column() {
    let src = "[milter]\nlisten = \"inet:127.0.0.1:7785\"\nmode = enforce\n";
    let err = refused(src);
    let text = err.to_string();
    assert_eq!(err.problems().len(), 1, "{text}");
    let p = &err.problems()[0];
    assert_eq!((p.line, p.column), (Some(3), Some(8)), "{text}");
    assert!(text.starts_with(&format!("{FILE}:3:8: ")), "{text}");
    assert!(!p.message.is_empty());
    assert!(!text.contains('\n'), "one line per problem: {text}");
}

#[test]
fn toml_syntax_error_unclosed_table_header() {
    let src = "[domains]\ninternal = [\"example.org\"]\n\n[limits.envelope\ntag = 5\n";
    let err = refused(src);
    let text = err.to_string();
    assert!(text.starts_with(&format!("{FILE}:4:")), "{text}");
    assert!(text.contains("unclosed table"), "{text}");
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    let src = "[milter]\nmode = \"enforce\"\nmode = \"monitor\"\n";
    let text = refused(src).to_string();
    assert!(text.starts_with(&format!("{FILE}:3:")), "{text}");
    assert!(text.contains("duplicate"), "{text}");
}

#[test]
fn unknown_top_level_key() {
    let src = "[domains]\ninternal = [\"example.org\"]\n\nbogus = 1\n";
    // `bogus` after [domains] belongs to that table.
    assert_one_problem(src, 4, "domains.bogus", "unknown field `bogus`");

    let src = "bogus = 1\n[domains]\ninternal = [\"example.org\"]\n";
    assert_one_problem(src, 1, "bogus", "unknown field `bogus`");

    let src = "[domains]\ninternal = [\"example.org\"]\n[milters]\nlisten = \"x\"\n";
    assert_one_problem(src, 3, "milters", "unknown field `milters`");
}

#[test]
fn unknown_nested_key() {
    let src = "[domains]\ninternal = [\"example.org\"]\n\n[limits.envelope]\ntag = 5\nbogus = 1\n";
    let text = assert_one_problem(src, 6, "limits.envelope.bogus", "unknown field `bogus`");
    assert!(text.starts_with(&format!("{FILE}:6:1: ")), "{text}");
    assert!(
        text.contains("`quarantine`"),
        "lists the valid keys: {text}"
    );

    let src = "[domains]\ninternal = [\"example.org\"]\n[limits.outside]\ntag = 5\n";
    assert_one_problem(src, 3, "limits.outside", "unknown field `outside`");
}

#[test]
fn wrong_type() {
    let src = "[domains]\ninternal = [\"example.org\"]\n[milter]\nmax_connections = \"many\"\n";
    let text = assert_one_problem(src, 4, "milter.max_connections", "invalid type");
    assert!(text.starts_with(&format!("{FILE}:4:19: ")), "{text}");

    let src = "[domains]\ninternal = \"example.org\"\n";
    assert_one_problem(src, 2, "domains.internal", "invalid type");

    let src = "[domains]\ninternal = [\"example.org\"]\n[limits.envelope]\ntag = -1\n";
    assert_one_problem(src, 4, "limits.envelope.tag", "-1");

    let src = "[domains]\ninternal = [\"example.org\"]\n[exempt]\nsenders = [\"a@b\", 7]\n";
    assert_one_problem(src, 4, "exempt.senders[1]", "invalid type");
}

#[test]
fn bad_mode_value() {
    let src = "[domains]\ninternal = [\"example.org\"]\n\n[milter]\nmode = \"loud\"\n";
    let text = assert_one_problem(src, 5, "milter.mode", "unknown variant `loud`");
    assert!(
        text.contains("`enforce`") && text.contains("`monitor`"),
        "{text}"
    );
}

#[test]
fn bad_log_format_value() {
    let src = "[domains]\ninternal = [\"example.org\"]\n[logging]\nformat = \"xml\"\n";
    assert_one_problem(src, 4, "logging.format", "unknown variant `xml`");
}

// ---------------------------------------------------------------- semantics (validate)

#[test]
fn bad_listen_address() {
    for (value, needle) in [
        ("tcp:127.0.0.1:7785", "is not a milter socket"),
        ("inet:127.0.0.1", "has no valid port"),
        ("inet:127.0.0.1:99999", "has no valid port"),
        ("inet::7785", "has no host"),
        ("unix:relative.sock", "needs an absolute socket path"),
    ] {
        let src =
            format!("[domains]\ninternal = [\"example.org\"]\n\n[milter]\nlisten = \"{value}\"\n");
        let text = assert_one_problem(&src, 5, "milter.listen", needle);
        assert!(text.contains(value), "{text}");
    }
}

#[test]
fn bad_socket_mode() {
    for value in ["0999", "rw-rw----", "1777", ""] {
        let src = format!(
            "[domains]\ninternal = [\"example.org\"]\n[milter]\nsocket_mode = \"{value}\"\n"
        );
        assert_semantic(
            &src,
            4,
            "milter.socket_mode",
            &format!("\"{value}\" is not an octal file mode such as \"0660\""),
        );
    }
    let ok =
        load_str("[domains]\ninternal = [\"example.org\"]\n[milter]\nsocket_mode = \"0600\"\n")
            .unwrap();
    assert_eq!(ok.socket_mode, 0o600);
}

#[test]
fn zero_or_invalid_duration() {
    let src = "[domains]\ninternal = [\"example.org\"]\n[milter]\nshutdown_timeout = \"0s\"\n";
    assert_semantic(src, 4, "milter.shutdown_timeout", "must be longer than 0");

    let src =
        "[domains]\ninternal = [\"example.org\"]\n[milter]\n\nconnection_timeout = \"soon\"\n";
    assert_one_problem(
        src,
        5,
        "milter.connection_timeout",
        "\"soon\" is not a duration such as \"30s\" or \"10m\"",
    );

    let ok = load_str(
        "[domains]\ninternal = [\"example.org\"]\n[milter]\nconnection_timeout = \"90s\"\nshutdown_timeout = \"2m\"\n",
    )
    .unwrap();
    assert_eq!(ok.connection_timeout, Duration::from_secs(90));
    assert_eq!(ok.shutdown_timeout, Duration::from_secs(120));
}

#[test]
fn durations_have_an_upper_bound() {
    for (table, key, value, max) in [
        ("milter", "connection_timeout", "2d", "1d"),
        ("milter", "shutdown_timeout", "2h", "1h"),
        ("quarantine", "expire_after", "10000000000y", "365d"),
        ("notify", "interval", "8d", "7d"),
        ("notify", "webhook_timeout", "61m", "1h"),
        ("storm", "window", "8d", "7d"),
        ("storm", "block_for", "500000000000y", "28d"),
        ("state", "timeout", "2h", "1h"),
    ] {
        let src =
            format!("[domains]\ninternal = [\"example.org\"]\n[{table}]\n{key} = \"{value}\"\n");
        assert_semantic(
            &src,
            4,
            &format!("{table}.{key}"),
            &format!("\"{value}\" is too long; use at most {max}"),
        );
    }
    let ok = load_str(
        "[domains]\ninternal = [\"example.org\"]\n[storm]\nblock_for = \"28d\"\n\
         [quarantine]\nexpire_after = \"365d\"\n",
    )
    .expect("at the bounds");
    assert_eq!(
        ok.policy.storm.block_for,
        Duration::from_secs(28 * 24 * 3600)
    );
}

#[test]
fn zero_max_connections_and_tiny_header_cap() {
    let src = "[domains]\ninternal = [\"example.org\"]\n[milter]\nmax_connections = 0\n";
    assert_semantic(src, 4, "milter.max_connections", "must be at least 1");
    let src = "[domains]\ninternal = [\"example.org\"]\n[milter]\nthreads = 0\n";
    assert_semantic(src, 4, "milter.threads", "must be between 1 and 256");
    let src = "[domains]\ninternal = [\"example.org\"]\n[milter]\nmax_header_bytes = 100\n";
    assert_semantic(
        src,
        4,
        "milter.max_header_bytes",
        "100 is too small; use at least 1024",
    );
}

#[test]
fn bad_log_level() {
    let src =
        "[domains]\ninternal = [\"example.org\"]\n\n[logging]\nlevel = \"fanout_milter=verbose\"\n";
    assert_one_problem(
        src,
        5,
        "logging.level",
        "\"fanout_milter=verbose\" is not a log level or filter",
    );
    for good in ["info", "debug", "info,fanout_milter=debug"] {
        let src =
            format!("[domains]\ninternal = [\"example.org\"]\n[logging]\nlevel = \"{good}\"\n");
        assert!(load_str(&src).is_ok(), "{good} must be accepted");
    }
}

/// `level = "verbose"` (or a typo such as "inof") is a valid EnvFilter *target* directive,
/// so it passes validation, and the daemon then logs nothing from fanout_milter.
#[test]
fn bare_word_that_is_not_a_level_is_refused() {
    let src = "[domains]\ninternal = [\"example.org\"]\n[logging]\nlevel = \"verbose\"\n";
    assert_one_problem(src, 4, "logging.level", "verbose");
}

#[test]
fn level_order() {
    let src = "[domains]\ninternal = [\"example.org\"]\n\n[limits.envelope]\ntag = 300\nquarantine = 200\nreject = 2000\n";
    assert_semantic(
        src,
        6,
        "limits.envelope.quarantine",
        "quarantine (200) must be above tag (300); use 0 to switch a level off",
    );

    // Equal levels are refused too, and a level switched off (0) is skipped.
    let src = "[domains]\ninternal = [\"example.org\"]\n[limits.external]\ntag = 10\nquarantine = 0\nreject = 10\n";
    assert_semantic(
        src,
        6,
        "limits.external.reject",
        "reject (10) must be above tag (10); use 0 to switch a level off",
    );
    let ok = "[domains]\ninternal = [\"example.org\"]\n[limits.external]\ntag = 10\nquarantine = 0\nreject = 11\n";
    assert!(load_str(ok).is_ok());
}

/// Writing a `[limits.envelope]` table with only some keys must keep the documented
/// defaults for the others (the example file says every key shows its default).
#[test]
fn partial_limits_table_keeps_default_levels() {
    let src = "[domains]\ninternal = [\"example.org\"]\n[limits.envelope]\ntag = 30\n";
    let c = load_str(src).unwrap();
    assert_eq!(c.policy.envelope.quarantine, 200);
    assert_eq!(c.policy.envelope.reject, 2000);
}

#[test]
fn bad_domain_pattern() {
    let src = "[domains]\ninternal = [\n  \"example.org\",\n  \"a.*.org\",\n]\n";
    assert_semantic(
        src,
        4,
        "domains.internal[1]",
        "invalid domain pattern \"a.*.org\": only a leading \"*.\" wildcard is allowed",
    );
    let src = "[domains]\ninternal = [\"example.org\", \"bad domain.org\"]\n";
    assert_semantic(
        src,
        2,
        "domains.internal[1]",
        "invalid domain \"bad domain.org\"",
    );
    let src = "[domains]\ninternal = [\"\"]\n";
    assert_semantic(src, 2, "domains.internal[0]", "empty domain");
}

#[test]
fn bad_exempt_glob() {
    let src = "[domains]\ninternal = [\"example.org\"]\n\n[exempt]\nsenders = [\n  \"ok@example.org\",\n  \"[unclosed@example.org\",\n]\n";
    assert_one_problem(src, 7, "exempt.senders[1]", "invalid pattern: ");
    let src = "[domains]\ninternal = [\"example.org\"]\n[exempt]\nsenders = [\" \"]\n";
    assert_semantic(
        src,
        4,
        "exempt.senders[0]",
        "invalid pattern: empty pattern",
    );
}

#[test]
fn trusted_sender_keys_are_parsed_and_checked() {
    let src = "[domains]\ninternal = [\"example.org\"]\n\
               [exempt]\nsenders = [\"svc-*\"]\nenvelope_senders = [\"cron@example.org\"]\n\
               [restricted]\nallowed_senders = [\"comms\"]\n\
               allowed_envelope_senders = [\"news@example.org\"]\n\
               [[list]]\naddress = \"board@example.org\"\n\
               allowed_envelope_senders = [\"pa@example.org\"]\n";
    let c = load_str(src).unwrap();
    assert_eq!(c.policy.exempt.logins.patterns(), ["svc-*"]);
    assert_eq!(c.policy.exempt.envelope.patterns(), ["cron@example.org"]);
    let r = &c.policy.restricted.allowed_senders;
    assert_eq!(r.logins.patterns(), ["comms"]);
    assert_eq!(r.envelope.patterns(), ["news@example.org"]);
    let board = c
        .policy
        .restricted
        .by_name(&c.lists[0].address)
        .expect("restricted by name");
    assert!(board.logins.is_empty());
    assert_eq!(board.envelope.patterns(), ["pa@example.org"]);
    let again = load_str(&c.effective_toml()).unwrap();
    assert_eq!(again.raw, c.raw, "check-config prints the new keys");

    let src = "[domains]\ninternal = [\"example.org\"]\n\n[exempt]\nenvelope_senders = [\"[x\"]\n";
    assert_semantic(
        src,
        5,
        "exempt.envelope_senders[0]",
        "invalid pattern: unclosed character class; missing ']'",
    );
    let src = "[domains]\ninternal = [\"example.org\"]\n[restricted]\nallowed_envelope_senders = [\" \"]\n";
    assert_semantic(
        src,
        4,
        "restricted.allowed_envelope_senders[0]",
        "invalid pattern: empty pattern",
    );
    let src = "[domains]\ninternal = [\"example.org\"]\n[[list]]\naddress = \"a@example.org\"\n\
               allowed_envelope_senders = [\" \"]\n";
    assert_semantic(
        src,
        5,
        "list[0].allowed_envelope_senders[0]",
        "invalid pattern: empty pattern",
    );
}

#[test]
fn reply_template_with_unknown_placeholder() {
    let src = "[domains]\ninternal = [\"example.org\"]\n\n[reply]\nreject = \"Refused: {why}\"\n";
    assert_semantic(
        src,
        5,
        "reply.reject",
        "unknown placeholder \"{why}\": use {reason}, {contact} or {queue_id}",
    );
    let src = "[domains]\ninternal = [\"example.org\"]\n[reply]\ntempfail = \"later {reason\"\n";
    assert_one_problem(src, 4, "reply.tempfail", "without a closing");
}

#[test]
fn reply_template_with_newline() {
    let src =
        "[domains]\ninternal = [\"example.org\"]\n[reply]\ntempfail = \"line one\\nline two\"\n";
    assert_one_problem(
        src,
        4,
        "reply.tempfail",
        "must be one line of printable ASCII",
    );
    let src = "[domains]\ninternal = [\"example.org\"]\n[reply]\nreject = '''\nmulti\nline'''\n";
    assert_one_problem(
        src,
        4,
        "reply.reject",
        "must be one line of printable ASCII",
    );
    let src = "[domains]\ninternal = [\"example.org\"]\n[reply]\nreject = \"  \"\n";
    assert_semantic(src, 4, "reply.reject", "must not be empty");
}

#[test]
fn reply_contact_with_placeholder() {
    let src = "[domains]\ninternal = [\"example.org\"]\n[reply]\ncontact = \"desk ({queue_id})\"\n";
    assert_semantic(src, 4, "reply.contact", "must not contain placeholders");
    let src = "[domains]\ninternal = [\"example.org\"]\n[reply]\ncontact = \"desk }\"\n";
    assert_semantic(src, 4, "reply.contact", "must not contain placeholders");
}

#[test]
fn every_semantic_problem_is_reported_sorted_by_line() {
    // Written in the opposite order from the one validate() checks them in.
    let src = "\
[reply]
contact = \"{contact}\"

[limits.envelope]
tag = 20
quarantine = 10

[domains]
internal = [\"*.*\"]

[milter]
listen = \"nowhere\"
shutdown_timeout = \"0s\"
socket_mode = \"abc\"
";
    let err = refused(src);
    let text = err.to_string();
    let got: Vec<(Option<usize>, &str)> = err
        .problems()
        .iter()
        .map(|p| (p.line, p.key.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(2), "reply.contact"),
            (Some(6), "limits.envelope.quarantine"),
            (Some(9), "domains.internal[0]"),
            (Some(12), "milter.listen"),
            (Some(13), "milter.shutdown_timeout"),
            (Some(14), "milter.socket_mode"),
        ],
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    for (rendered, (line, key)) in lines.iter().zip(&got) {
        let prefix = format!("{FILE}:{}: {key}: ", line.unwrap());
        assert!(rendered.starts_with(&prefix), "{rendered:?} vs {prefix:?}");
    }
}

#[test]
fn problems_without_a_line_come_last() {
    // domains.internal is not written at all: its problem has no line.
    let src = "[milter]\nlisten = \"nowhere\"\n";
    let err = refused(src);
    let got: Vec<(Option<usize>, &str)> = err
        .problems()
        .iter()
        .map(|p| (p.line, p.key.as_str()))
        .collect();
    assert_eq!(
        got,
        [(Some(2), "milter.listen"), (None, "domains.internal")]
    );
}

#[test]
fn read_error_names_the_file() {
    let missing = Path::new("/nonexistent/fanout-milter/fanout-milter.toml");
    let err = load(missing).unwrap_err();
    assert!(matches!(err.kind, ConfigErrorKind::Read(_)));
    assert!(err.problems().is_empty());
    let text = err.to_string();
    assert!(
        text.starts_with(
            "/nonexistent/fanout-milter/fanout-milter.toml: cannot read configuration: "
        ),
        "{text}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

// ---------------------------------------------------------------- defaults and the example

#[test]
fn empty_file_has_defaults_but_needs_internal_domains() {
    let err = refused("");
    assert_eq!(
        err.to_string(),
        format!(
            "{FILE}: domains.internal: is empty, so every recipient counts as external for \
             [limits.external]; list your own domains, or set the [limits.external] levels to 0"
        )
    );
    assert_eq!(err.problems().len(), 1);
    assert_eq!(err.problems()[0].line, None);

    // The same defaults, with the one missing piece supplied, are accepted.
    let c = load_str("[domains]\ninternal = [\"example.org\"]\n").unwrap();
    let defaults = RawConfig::default();
    assert_eq!(c.raw.milter, defaults.milter);
    assert_eq!(c.raw.logging, defaults.logging);
    assert_eq!(c.raw.limits, defaults.limits);
    assert_eq!(c.raw.exempt, defaults.exempt);
    assert_eq!(c.raw.reply, defaults.reply);
    assert_eq!(
        c.listen,
        ListenAddr::Inet {
            host: "127.0.0.1".into(),
            port: 7785
        }
    );
    assert_eq!(c.socket_mode, 0o660);
    assert_eq!(c.max_connections, 200);
    assert_eq!(c.threads, 1);
    assert_eq!(c.connection_timeout, Duration::from_secs(600));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.max_header_bytes, 1024 * 1024);
    assert_eq!(c.policy.mode, crate::policy::Mode::Enforce);
    assert_eq!(
        (
            c.policy.envelope.tag,
            c.policy.envelope.quarantine,
            c.policy.envelope.reject
        ),
        (50, 200, 2000)
    );
    assert_eq!(
        (
            c.policy.external.tag,
            c.policy.external.quarantine,
            c.policy.external.reject
        ),
        (0, 100, 0)
    );
    assert_eq!(c.file, Path::new(FILE));
}

#[test]
fn empty_internal_domains_are_fine_when_external_limits_are_off() {
    let src = "[limits.external]\ntag = 0\nquarantine = 0\nreject = 0\n";
    let c = load_str(src).unwrap();
    assert!(c.policy.internal.is_empty());
}

#[test]
fn shipped_example_parses() {
    let c = load_str(EXAMPLE).unwrap_or_else(|e| panic!("conf/fanout-milter.toml: {e}"));
    assert_eq!(c.listen.to_string(), "inet:127.0.0.1:7785");
    assert!(c.policy.internal.contains("example.org"));
    assert!(c.policy.internal.contains("mail.example.org"));
    assert!(!c.policy.internal.contains("example.com"));
    // The example claims to show every default.
    let mut defaults = RawConfig::default();
    defaults.domains.internal = vec!["example.org".into(), "*.example.org".into()];
    assert_eq!(c.raw, defaults, "the example must show the defaults");
}

#[test]
fn effective_settings_round_trip() {
    let c = load_str(EXAMPLE).unwrap();
    let printed = c.effective_toml();
    assert!(!printed.starts_with("# cannot print"), "{printed}");
    let again = load_str(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.raw, c.raw);
    assert_eq!(again.effective_toml(), printed);

    // Non-default values survive too.
    let src = "\
[milter]
listen = \"unix:/run/fanout-milter/milter.sock\"
mode = \"monitor\"
socket_mode = \"0600\"
connection_timeout = \"5m\"
[logging]
level = \"info,fanout_milter=debug\"
format = \"json\"
[domains]
internal = [\"corp.example\", \"*.corp.example\"]
[limits.envelope]
tag = 5
quarantine = 0
reject = 9
monitor = true
[exempt]
senders = [\"svc-*@corp.example\"]
[reply]
contact = \"ext. 4242\"
reject = \"No ({reason}) {queue_id}\"
";
    let c = load_str(src).unwrap();
    let again = load_str(&c.effective_toml()).unwrap();
    assert_eq!(again.raw, c.raw);
    assert_eq!(again.listen, c.listen);
    assert_eq!(again.policy.mode, crate::policy::Mode::Monitor);
    assert!(again.policy.envelope.monitor);
}

#[test]
fn a_reload_keeps_the_running_value_of_every_restart_only_key() {
    let base = load_str(EXAMPLE).unwrap();
    let reload = |text: String| {
        let mut new = load_str(&text).unwrap();
        let kept = base.keep_restart_only(&mut new);
        (new, kept)
    };

    let (moved, kept) = reload(EXAMPLE.replace(
        "listen = \"inet:127.0.0.1:7785\"",
        "listen = \"inet:127.0.0.1:7786\"",
    ));
    assert_eq!(kept, ["milter.listen"]);
    assert_eq!(moved.listen, base.listen);
    assert_eq!(
        moved.raw, base.raw,
        "check-config of the running daemon shows the old value"
    );

    let (limits, kept) = reload(
        EXAMPLE
            .replace("tag = 50\n", "tag = 20\n")
            .replace("quarantine = 100\n", "quarantine = 30\n"),
    );
    assert_ne!(limits.raw.limits, base.raw.limits, "the edit took effect");
    assert!(kept.is_empty(), "{kept:?}");

    let (logging, kept) = reload(EXAMPLE.replace("format = \"text\"", "format = \"json\""));
    assert_eq!(kept, ["logging"]);
    assert_eq!(logging.raw.logging, base.raw.logging);

    // Deadlines of the review tools are read by each command: not restart-only.
    let (review, kept) =
        reload(EXAMPLE.replace("review_within = \"4h\"", "review_within = \"2h\""));
    assert!(kept.is_empty(), "{kept:?}");
    assert_eq!(review.quarantine.review_within, Duration::from_secs(7200));

    // The state directory, the admin socket in it and the state backend stay.
    let (moved, kept) = reload(
        EXAMPLE
            .replace(
                "state_dir = \"/var/lib/fanout-milter\"",
                "state_dir = \"/srv/fanout\"",
            )
            .replace("backend = \"memory\"", "backend = \"redis\"")
            .replace("tag = 50\n", "tag = 20\n"),
    );
    assert_eq!(kept, ["quarantine.state_dir", "state.backend"]);
    assert_eq!(moved.state_dir, Path::new("/var/lib/fanout-milter"));
    assert_eq!(moved.admin_socket, base.admin_socket);
    assert_eq!(moved.state, StateSettings::Memory);
    assert_ne!(moved.raw.limits, base.raw.limits, "the rest is reloaded");

    let (moved, kept) = reload(EXAMPLE.replacen(
        "password_file = \"\"",
        "password_file = \"/etc/fanout-milter/redis.secret\"",
        1,
    ));
    assert_eq!(kept, ["state.password_file"]);
    assert_eq!(moved.raw.state.password_file, "");

    let mut same = base.clone();
    assert!(base.keep_restart_only(&mut same).is_empty());
}

/// The storm and rate state backend is built once at start: every `[state]` key, a
/// future one too, is in the one list of restart-only keys.
#[test]
fn every_state_key_is_restart_only() {
    let keys: Vec<&str> = RESTART_ONLY.iter().map(|(k, _)| *k).collect();
    let state = toml::Value::try_from(raw::RawState::default()).unwrap();
    let table = state.as_table().expect("a table");
    assert!(table.len() >= 6, "{table:?}");
    for key in table.keys() {
        assert!(
            keys.contains(&format!("state.{key}").as_str()),
            "state.{key}"
        );
    }
}

#[test]
fn confirm_is_only_for_hidden_and_restricted() {
    let c = load_after_domains(
        "[hidden]\naction = \"confirm\"\nconfirm_max_audience = 800\n\
         [restricted]\naction = \"confirm\"\n\
         [review]\nlisten = \"inet:127.0.0.1:9786\"\npublic_url = \"https://desk.corp.example\"\n",
    )
    .expect("confirm where the question is whether the sender meant it");
    assert_eq!(c.policy.hidden.action, crate::policy::Action::Confirm);
    assert_eq!(c.policy.hidden.confirm_max_audience, 800);
    assert_eq!(c.policy.restricted.action, crate::policy::Action::Confirm);
    assert_eq!(c.policy.restricted.confirm_max_audience, 5000);
    for (table, key) in [
        ("[drift]", "drift.action"),
        ("[storm]", "storm.action"),
        (
            "[[scope]]\nsenders = [\"*@corp.example\"]\nmay_reach = [\"corp.example\"]",
            "scope[0].action",
        ),
    ] {
        let src = format!("{table}\naction = \"confirm\"\n");
        let line = 3 + table.lines().count();
        refused_after_domains(&src, line, key, "only for [hidden] and [restricted]");
    }
    refused_after_domains(
        "[hidden]\naction = \"confirm\"\n",
        4,
        "hidden.action",
        "needs the review desk",
    );
    refused_after_domains(
        "[restricted]\naction = \"confirm\"\n[review]\nlisten = \"inet:127.0.0.1:9786\"\n\
         public_url = \"https://desk.corp.example\"\n[notices.confirm]\n\
         body = \"Send: {link_send}\"\n",
        4,
        "restricted.action",
        "needs {link_withdraw} in [notices.confirm] body",
    );
    refused_after_domains(
        "[expansion]\non_unknown = \"confirm\"\n",
        4,
        "expansion.on_unknown",
        "only for [hidden] and [restricted]",
    );
}

#[test]
fn sender_notice_settings_are_read_and_checked() {
    let c = load_after_domains("").expect("defaults");
    assert_eq!(c.notify.sender_interval, Duration::from_secs(600));
    assert_eq!(c.notify.sender_notices_per_minute, 60);
    assert_eq!(c.quarantine.confirm_within, Duration::from_secs(86_400));
    assert_eq!(
        c.quarantine.confirm_remember,
        Duration::from_secs(30 * 86_400)
    );
    assert!(c.policy.quiet_rules.is_empty());
    let c = load_after_domains(
        "[hidden]\nnotify_sender = false\n[limits.envelope]\nnotify_sender = false\n\
         [quarantine]\nconfirm_remember = \"0s\"\n",
    )
    .expect("quiet rules");
    assert_eq!(c.policy.quiet_rules, ["limits.envelope", "hidden"]);
    assert_eq!(c.quarantine.confirm_remember, Duration::ZERO);
    refused_after_domains(
        "[notify]\nsender_notices_per_minute = 0\n",
        4,
        "notify.sender_notices_per_minute",
        "at least 1",
    );
    refused_after_domains(
        "[quarantine]\nconfirm_within = \"0s\"\n",
        4,
        "quarantine.confirm_within",
        "longer than 0",
    );
}
