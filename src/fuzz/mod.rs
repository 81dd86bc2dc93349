// SPDX-License-Identifier: GPL-3.0-or-later
//! Entry points for the coverage-guided fuzz targets in `tests/fuzz` and for the
//! property tests that run in `cargo test`: each takes arbitrary bytes, drives the same
//! code the daemon runs, and panics only when an invariant breaks (a panic inside the
//! code under test, a header or reply that is not one clean line, an error without the
//! place it came from). Built with the `fuzzing` feature, and for the crate's tests.

pub mod config;
pub mod ldap;
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
