// SPDX-License-Identifier: GPL-3.0-or-later
//! Second stage of loading: checks the meaning of every value and builds [`Config`].
//! All problems are collected, each with the dotted key it belongs to.

use super::raw::{RawConfig, RawLevels};
use super::reply::{Replies, check_template};
use super::{Config, ListenAddr};
use crate::policy::{AddressGlobs, DomainSet, Levels, Policy};
use std::path::Path;
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

type Problems = Vec<(String, String)>;

pub(super) fn validate(raw: RawConfig, file: &Path) -> Result<Config, Problems> {
    let mut problems = Problems::new();
    let mut report = |key: &str, msg: String| problems.push((key.to_owned(), msg));

    let listen = match raw.milter.listen.parse::<ListenAddr>() {
        Ok(l) => Some(l),
        Err(e) => {
            report("milter.listen", e.to_string());
            None
        }
    };
    let socket_mode = match u32::from_str_radix(raw.milter.socket_mode.trim(), 8) {
        Ok(m) if m <= 0o777 => m,
        _ => {
            report(
                "milter.socket_mode",
                format!(
                    "\"{}\" is not an octal file mode such as \"0660\"",
                    raw.milter.socket_mode
                ),
            );
            0
        }
    };
    if raw.milter.max_connections == 0 {
        report("milter.max_connections", "must be at least 1".into());
    }
    if raw.milter.max_header_bytes < 1024 {
        report(
            "milter.max_header_bytes",
            format!(
                "{} is too small; use at least 1024",
                raw.milter.max_header_bytes
            ),
        );
    }
    let mut duration = |key: &str, value: &str| match humantime::parse_duration(value.trim()) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            report(key, "must be longer than 0".into());
            Duration::ZERO
        }
        Err(e) => {
            report(
                key,
                format!("\"{value}\" is not a duration such as \"30s\" or \"10m\": {e}"),
            );
            Duration::ZERO
        }
    };
    let connection_timeout = duration("milter.connection_timeout", &raw.milter.connection_timeout);
    let shutdown_timeout = duration("milter.shutdown_timeout", &raw.milter.shutdown_timeout);

    if let Err(e) = check_log_level(&raw.logging.level) {
        report("logging.level", e);
    }

    let internal = DomainSet::new(&raw.domains.internal).unwrap_or_else(|(i, e)| {
        report(&format!("domains.internal[{i}]"), e.to_string());
        DomainSet::default()
    });
    let exempt = AddressGlobs::new(&raw.exempt.senders).unwrap_or_else(|(i, e)| {
        report(
            &format!("exempt.senders[{i}]"),
            format!("invalid pattern: {e}"),
        );
        AddressGlobs::default()
    });
    let envelope = levels("limits.envelope", &raw.limits.envelope, &mut report);
    let external = levels("limits.external", &raw.limits.external, &mut report);
    if raw.domains.internal.is_empty()
        && external.quarantine.max(external.reject).max(external.tag) > 0
    {
        report(
            "domains.internal",
            "is empty, so every recipient counts as external for [limits.external]; \
             list your own domains, or set the [limits.external] levels to 0"
                .into(),
        );
    }

    for (key, value) in [
        ("reply.reject", &raw.reply.reject),
        ("reply.tempfail", &raw.reply.tempfail),
    ] {
        if let Err(e) = check_template(value) {
            report(key, e);
        }
    }
    if raw.reply.contact.contains(['{', '}']) {
        report("reply.contact", "must not contain placeholders".into());
    } else if let Err(e) = check_template(&raw.reply.contact) {
        report("reply.contact", e);
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Config {
        file: file.to_owned(),
        listen: listen.expect("listen is set when there is no problem"),
        socket_mode,
        max_connections: raw.milter.max_connections,
        connection_timeout,
        shutdown_timeout,
        max_header_bytes: raw.milter.max_header_bytes,
        policy: Policy {
            mode: raw.milter.mode,
            internal,
            envelope,
            external,
            exempt,
        },
        replies: Replies {
            contact: raw.reply.contact.clone(),
            reject: raw.reply.reject.clone(),
            tempfail: raw.reply.tempfail.clone(),
        },
        raw,
    })
}

/// A tracing filter whose bare words are all levels: EnvFilter would take a typo such
/// as "inof" for a target name and silently drop every log line of ours.
fn check_log_level(filter: &str) -> Result<(), String> {
    EnvFilter::try_new(filter)
        .map_err(|e| format!("\"{filter}\" is not a log level or filter: {e}"))?;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "\"{directive}\" is not a log level: use error, warn, info, debug, trace or off \
                 (or TARGET=LEVEL)"
            ));
        }
    }
    Ok(())
}

fn levels(key: &str, raw: &RawLevels, report: &mut impl FnMut(&str, String)) -> Levels {
    let (tag, quarantine, reject) = (
        raw.tag.unwrap_or(0),
        raw.quarantine.unwrap_or(0),
        raw.reject.unwrap_or(0),
    );
    let set: Vec<(&str, u64)> = [("tag", tag), ("quarantine", quarantine), ("reject", reject)]
        .into_iter()
        .filter(|&(_, v)| v > 0)
        .collect();
    for pair in set.windows(2) {
        let ((lo_name, lo), (hi_name, hi)) = (pair[0], pair[1]);
        if lo >= hi {
            report(
                &format!("{key}.{hi_name}"),
                format!(
                    "{hi_name} ({hi}) must be above {lo_name} ({lo}); use 0 to switch a level off"
                ),
            );
        }
    }
    Levels {
        tag,
        quarantine,
        reject,
        monitor: raw.monitor,
    }
}
