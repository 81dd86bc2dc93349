// SPDX-License-Identifier: GPL-3.0-or-later
//! Entry points for the coverage-guided fuzz targets in `tests/fuzz` and for the
//! property tests that run in `cargo test`: each takes arbitrary bytes, drives the same
//! code the daemon runs, and panics only when an invariant breaks (a panic inside the
//! code under test, a header or reply that is not one clean line, an error without the
//! place it came from). Built with the `fuzzing` feature, and for the crate's tests.

pub mod config;
pub mod ldap;
pub mod message;
pub mod stream;
pub mod tables;
pub mod templates;

use crate::text;

/// Panics unless `value` is one line that is safe to put in a header, a reply or a log:
/// no CR or LF, no control or invisible format character, at most `max` bytes.
pub fn assert_one_line(what: &str, value: &str, max: usize) {
    if let Some(c) = value.chars().find(|&c| text::is_unsafe(c)) {
        panic!("{what} carries {:?}: {value:?}", c);
    }
    assert!(
        value.len() <= max,
        "{what} is {} bytes, more than {max}: {value:?}",
        value.len()
    );
}

/// The property tests' settings: `cases` inputs from a fixed `seed`, and no files of
/// failures written into the source tree.
#[cfg(test)]
pub(crate) fn proptest_config(cases: u32, seed: u64) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// A fuzz target's entry point: panics only when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name, with its entry point.
pub const TARGETS: &[(&str, Target)] = &[
    ("message", message::message),
    ("stream", stream::stream),
    ("config", config::config),
    ("tables", tables::tables),
    ("ldap", ldap::ldap),
    ("templates", templates::templates),
];

/// Every target's seed corpus, by target name.
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    vec![
        ("message", message::seeds()),
        ("stream", stream::seeds()),
        ("config", config::seeds()),
        ("tables", tables::seeds()),
        ("ldap", ldap::seeds()),
        ("templates", templates::seeds()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every crash the fuzzers found, once fixed, is kept in
    /// `tests/fuzz/regressions/TARGET/` and replayed here; so is every seed.
    #[test]
    fn every_regression_and_seed_passes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/regressions");
        let seeds = seeds();
        for (name, target) in TARGETS {
            let (_, corpus) = seeds
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no seeds for target {name}"));
            assert!(!corpus.is_empty(), "{name} has seeds");
            for seed in corpus {
                target(seed);
            }
            let Ok(entries) = std::fs::read_dir(dir.join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("regression entry").path();
                let data = std::fs::read(&path).expect("regression file");
                eprintln!("replaying {}", path.display());
                target(&data);
            }
        }
        let names = names();
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let name = entry.expect("regressions entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                names.contains(&&*name),
                "regressions for an unknown target: {name}"
            );
        }
    }

    fn names() -> Vec<&'static str> {
        TARGETS.iter().map(|(n, _)| *n).collect()
    }

    /// The fuzz crate is built only by scripts/fuzz (it needs cargo-afl), so its
    /// binaries are checked here: one per target, each calling its entry point.
    #[test]
    fn every_target_has_a_fuzz_binary_and_every_binary_a_target() {
        let bins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/src/bin");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&bins).expect("tests/fuzz/src/bin") {
            let path = entry.expect("bin entry").path();
            let name = path
                .file_stem()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if name == "seeds" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("bin source");
            assert!(
                text.contains(&format!("fanout_milter::fuzz::{name}::{name}(data)")),
                "{} must call fanout_milter::fuzz::{name}::{name}",
                path.display()
            );
            found.push(name);
        }
        found.sort();
        let mut names = names();
        names.sort();
        assert_eq!(found, names);
    }
}
