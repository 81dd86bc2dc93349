// SPDX-License-Identifier: GPL-3.0-or-later
//! `[postfix]`: the instance the admin commands act on, and the address settings
//! read from it (`recipient_delimiter`, `myorigin`).

use crate::config::raw::RawPostfix;
use crate::config::{DelimiterOrigin, FALLBACK_DELIMITER, MyoriginOrigin, PostfixSettings};
use crate::policy::address::RecipientDelimiter;

/// Checks `[postfix]`.
pub(super) fn check(raw: &RawPostfix, report: &mut impl FnMut(&str, String)) {
    for (key, dir) in [
        ("postfix.config_directory", &raw.config_directory),
        ("postfix.command_directory", &raw.command_directory),
        ("postfix.sendmail", &raw.sendmail),
    ] {
        if dir.is_relative() {
            report(
                key,
                format!("\"{}\" must be an absolute path", dir.display()),
            );
        }
    }
    if let Some(d) = &raw.recipient_delimiter
        && let Err(e) = check_delimiter(d)
    {
        report("postfix.recipient_delimiter", e);
    }
    if let Some(o) = &raw.myorigin
        && let Err(e) = check_origin(o)
    {
        report("postfix.myorigin", e);
    }
}

/// The settings of a checked `[postfix]`; what the file leaves out is filled in
/// later, by `postconf` or a fallback.
pub(super) fn settings(raw: &RawPostfix) -> PostfixSettings {
    PostfixSettings {
        config_directory: raw.config_directory.clone(),
        command_directory: raw.command_directory.clone(),
        sendmail: raw.sendmail.clone(),
        recipient_delimiter: RecipientDelimiter::new(
            raw.recipient_delimiter
                .as_deref()
                .unwrap_or(FALLBACK_DELIMITER),
        ),
        delimiter_origin: match raw.recipient_delimiter {
            Some(_) => DelimiterOrigin::Config,
            None => DelimiterOrigin::Fallback("not asked: configuration parsed only".into()),
        },
        myorigin: raw.myorigin.as_deref().map(origin_key).unwrap_or_default(),
        myorigin_origin: match raw.myorigin {
            Some(_) => MyoriginOrigin::Config,
            None => MyoriginOrigin::Fallback("not asked: configuration parsed only".into()),
        },
    }
}

/// A `recipient_delimiter` must be characters that can sit in a local part: no space,
/// control character, `@`, quote or comma.
pub(in crate::config) fn check_delimiter(set: &str) -> Result<(), String> {
    match set
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '"' | ','))
    {
        Some(c) => Err(format!(
            "{} cannot separate an address extension; use characters such as \"+\" or \"+-\", or \"\" for none",
            crate::text::neutralize(&format!("{c:?}"))
        )),
        None => Ok(()),
    }
}

/// A `myorigin`: a domain name (`example.org`) or an address literal (`[192.0.2.1]`).
pub(in crate::config) fn check_origin(value: &str) -> Result<(), String> {
    let v = value.trim().trim_end_matches('.');
    let literal = v.starts_with('[') && v.ends_with(']');
    let ok = !v.is_empty()
        && (literal
            || v.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
            }));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{}\" is not a domain such as example.org",
            crate::text::neutralize(value)
        ))
    }
}

/// A checked `myorigin` as addresses carry it: trimmed, without a trailing dot,
/// lower case.
pub(in crate::config) fn origin_key(value: &str) -> String {
    value.trim().trim_end_matches('.').to_ascii_lowercase()
}
