// SPDX-License-Identifier: GPL-3.0-or-later
//! The configuration loader: TOML text through [`config::parse`] (syntax, then every
//! check), the reload's restart-only merge, the printed effective settings, and the
//! directory a configuration without table files loads.

use crate::config::span::SpanIndex;
use crate::config::{self, Config};
use crate::directory::ldap::Snapshots;
use crate::directory::{Directory, DriftMode};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The name the text is loaded under; every error must name it.
const FILE: &str = "/etc/fanout-milter/fuzz.toml";

/// The shipped example configuration.
const EXAMPLE: &str = include_str!("../../conf/fanout-milter.toml");

/// A state directory that does not exist: a load finds no accepted list sizes there,
/// and nothing is written.
const NO_STATE_DIR: &str = "/nonexistent/fanout-milter-fuzz";

/// A configuration in force, for the reload's merge.
fn running() -> &'static Config {
    static RUNNING: OnceLock<Config> = OnceLock::new();
    RUNNING.get_or_init(|| {
        config::parse(
            "[domains]\ninternal = [\"corp.example\"]\n",
            Path::new(FILE),
        )
        .expect("a minimal configuration")
    })
}

/// Loads `data` (lossy UTF-8) as configuration text and panics when an invariant
/// breaks: a panic in the loader, an error that does not name the file and a line
/// (and the key, when it is about one), a reload merge that changes a configuration
/// against itself, printed settings that do not load again, or a panic loading the
/// directory of a configuration without table files.
pub fn config(data: &[u8]) {
    let src = String::from_utf8_lossy(data);
    let file = Path::new(FILE);
    let config = match config::parse(&src, file) {
        Ok(config) => config,
        Err(e) => {
            check_error(&e, &src);
            return;
        }
    };
    assert_eq!(config.file, file);

    let mut same = config.clone();
    assert!(
        config.keep_restart_only(&mut same).is_empty(),
        "a configuration differs from itself"
    );
    let mut reloaded = config.clone();
    running().keep_restart_only(&mut reloaded);
    assert_eq!(reloaded.listen, running().listen);
    assert_eq!(reloaded.state_dir, running().state_dir);

    let effective = config.effective_toml();
    if let Err(e) = config::parse(&effective, file)
        && !redacted(&effective)
    {
        panic!("the effective settings do not load again: {e}\n{effective}");
    }

    if config
        .directories
        .iter()
        .all(|d| d.kind == config::DirectoryKind::Ldap)
    {
        let mut config = config;
        config.state_dir = PathBuf::from(NO_STATE_DIR);
        // An LDAP source without a snapshot: its domains are tempfailed, no file read.
        if let Ok(directory) = Directory::load(&config, DriftMode::ReadOnly, &Snapshots::default())
        {
            for list in directory.index.lists() {
                assert!(
                    list.total() >= list.mailboxes.len() as u64,
                    "{} counts fewer than its mailboxes",
                    list.address
                );
            }
        }
    }
}

/// True when the printed settings hide a secret (their redaction may not load).
fn redacted(effective: &str) -> bool {
    effective.contains("REDACTED") || effective.contains("***")
}

/// Every problem names the file, and a line within the text unless it is about a key
/// the text does not write at all (a required setting left out: then it names the
/// key); a problem about a key names it.
fn check_error(e: &config::ConfigError, src: &str) {
    let problems = e.problems();
    assert!(!problems.is_empty(), "an error without a problem: {e}");
    let shown = e.to_string();
    assert!(shown.contains(FILE), "the error hides the file: {shown}");
    let lines = src.split('\n').count();
    for p in problems {
        let Some(line) = p.line else {
            let written = SpanIndex::build(src)
                .ok()
                .and_then(|index| index.offset_of(&p.key));
            assert!(
                !p.key.is_empty() && written.is_none(),
                "a problem without a line about a key the text writes: {p:?} in\n{src}"
            );
            assert!(shown.contains(&p.key), "the error hides the key: {shown}");
            continue;
        };
        assert!(
            (1..=lines).contains(&line),
            "line {line} of a {lines}-line text: {p:?}"
        );
        assert!(
            shown.contains(&format!("{FILE}:{line}")),
            "the error does not show {FILE}:{line}: {shown}"
        );
        if !p.key.is_empty() {
            assert!(shown.contains(&p.key), "the error hides the key: {shown}");
        }
        assert!(!p.message.trim().is_empty(), "an empty message: {p:?}");
    }
}

/// Seeds: the shipped configuration, whole and cut into its sections, and the
/// configurations of the unit tests.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = vec![EXAMPLE.as_bytes().to_vec(), Vec::new()];
    let mut section = String::new();
    for line in EXAMPLE.lines() {
        if line.starts_with('[') && !section.trim().is_empty() {
            out.push(std::mem::take(&mut section).into_bytes());
        }
        let uncommented = line.strip_prefix("# ").filter(|l| {
            l.starts_with('[') || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))
        });
        section.push_str(uncommented.unwrap_or(line));
        section.push('\n');
    }
    out.push(section.into_bytes());
    for text in [
        "[domains]\ninternal = [\"corp.example\"]\n",
        "[milter]\nlisten = \"inet:127.0.0.1:8890\"\n\n[limits.envelope]\ntag = 5\nreject = 2\n",
        "[[list]]\naddress = \"all@corp.example\"\nmember_count = 4000\nallowed_senders = [\"ceo@corp.example\"]\n",
        "[[directory]]\ntype = \"ldap\"\nname = \"corp\"\nurl = \"ldap://dc1.corp.example\"\n\
         base_dns = [\"dc=corp,dc=example\"]\ndomains = [\"corp.example\"]\n",
        "[reply]\nreject = \"{reason} {nope}\"\ncontact = \"x\"\n",
        "[milter\nlisten = 1\n",
        "[state]\nbackend = \"redis\"\nurl = \"redis://:secret@127.0.0.1/\"\n",
    ] {
        out.push(text.as_bytes().to_vec());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config as Cases;

    #[test]
    fn every_seed_loads_or_says_where() {
        let seeds = seeds();
        assert!(
            seeds.len() > 10,
            "the example's sections and the tests' texts"
        );
        for seed in &seeds {
            config(seed);
        }
        assert!(
            config::parse(EXAMPLE, Path::new(FILE)).is_ok(),
            "the example loads"
        );
    }

    fn cases() -> Cases {
        crate::fuzz::proptest_config(128, 0xc0f1_6000)
    }

    /// A key of the configuration and a value that may be wrong in every way.
    fn key_value() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "listen",
            "socket_mode",
            "threads",
            "tag",
            "quarantine",
            "reject",
            "internal",
            "address",
            "members",
            "member_count",
            "contact",
            "reject",
            "tempfail",
            "type",
            "path",
            "domains",
            "url",
            "max_depth",
            "factor",
            "state_dir",
            "subject",
            "body",
            "window",
            "interval",
            "on_failure",
            "allowed_senders",
            "base_dns",
            "name",
        ]);
        let value = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            "\"[^\"\\\\]{0,40}\"",
            Just("\"\\u202e\\r\\n\\u0000\"".to_owned()),
            Just("[\"a@corp.example\", \"\"]".to_owned()),
            Just("1e400".to_owned()),
            Just("\"99999999999999999999d\"".to_owned()),
            Just("{ a = 1 }".to_owned()),
            Just(format!("\"{}\"", "x".repeat(5000))),
            Just("-0.0".to_owned()),
            Just("true".to_owned()),
        ];
        (key, value).prop_map(|(k, v)| format!("{k} = {v}\n"))
    }

    /// Text made of real section headers and keys with hostile values.
    fn document() -> impl Strategy<Value = Vec<u8>> {
        let section = prop::sample::select(vec![
            "[milter]",
            "[limits.envelope]",
            "[limits.audience]",
            "[domains]",
            "[reply]",
            "[[list]]",
            "[[directory]]",
            "[expansion]",
            "[drift]",
            "[quarantine]",
            "[state]",
            "[storm]",
            "[rate]",
            "[notify]",
            "[notices.held]",
            "[review]",
            "[metrics]",
            "[postfix]",
            "[exempt]",
            "[bogus]",
        ]);
        prop::collection::vec((section, prop::collection::vec(key_value(), 0..4)), 0..6).prop_map(
            |parts| {
                let mut text = String::new();
                for (header, lines) in parts {
                    text.push_str(header);
                    text.push('\n');
                    for l in lines {
                        text.push_str(&l);
                    }
                }
                text.into_bytes()
            },
        )
    }

    proptest! {
        #![proptest_config(cases())]

        #[test]
        fn structured_text_loads_or_says_where(data in document()) {
            config(&data);
        }

        #[test]
        fn any_bytes_load_or_say_where(data in prop::collection::vec(any::<u8>(), 0..512)) {
            config(&data);
        }
    }
}
