// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter brake on|off|status`: the emergency brake of the running daemon (and,
//! through its shared state backend, of every relay of the fleet), through its control
//! socket.

use super::{Outcome, load_config};
use crate::control::{self, Request, Response};
use crate::quarantine::review::invoking_user;
use crate::state::Brake;
use crate::text;
use anyhow::anyhow;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// `brake on --min-audience N [--for D] --comment TEXT`.
pub fn on(path: &Path, min_audience: u64, hold_for: Option<Duration>, comment: String) -> Outcome {
    let config = load_config(path)?;
    let request = Request::BrakeOn {
        min_audience,
        for_secs: hold_for.map(|d| d.as_secs().max(1)),
        by: invoking_user(),
        comment,
    };
    match control::request(&config.admin_socket, &request)? {
        Response::Brake {
            brake: Some(b),
            replaced,
        } => {
            if let Some(old) = &replaced {
                println!("{}", replaced_line(old));
            }
            print!("{}", brake_text(Some(&b)));
            Ok(ExitCode::SUCCESS)
        }
        other => Err(refused(other)),
    }
}

/// `brake off --comment TEXT`.
pub fn off(path: &Path, comment: String) -> Outcome {
    let config = load_config(path)?;
    let request = Request::BrakeOff {
        by: invoking_user(),
        comment,
    };
    match control::request(&config.admin_socket, &request)? {
        Response::Brake { brake: None, .. } => {
            println!("emergency brake released: large mail flows again");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(refused(other)),
    }
}

/// `brake status [--json]`: exits 0 whether or not it is on.
pub fn status(path: &Path, json: bool) -> Outcome {
    let config = load_config(path)?;
    match control::request(&config.admin_socket, &Request::BrakeStatus)? {
        Response::Brake { brake, .. } if json => {
            let json = serde_json::to_string_pretty(&brake).unwrap_or_default();
            println!("{}", text::neutralize_json(&json));
            Ok(ExitCode::SUCCESS)
        }
        Response::Brake { brake, .. } => {
            print!("{}", brake_text(brake.as_ref()));
            Ok(ExitCode::SUCCESS)
        }
        other => Err(refused(other)),
    }
}

fn refused(response: Response) -> anyhow::Error {
    match response {
        Response::Error { message } => {
            anyhow!("the daemon refused: {}", text::neutralize(&message))
        }
        other => anyhow!("unexpected answer from the daemon: {other:?}"),
    }
}

/// The line saying which brake a new one replaced; who pulled it is neutralised.
pub fn replaced_line(old: &Brake) -> String {
    format!(
        "replaced the emergency brake that was on: {}",
        text::neutralize(&crate::brake::replaced_text(old))
    )
}

/// The brake for a terminal; who pulled it and why are neutralised.
pub fn brake_text(brake: Option<&Brake>) -> String {
    let Some(b) = brake else {
        return "emergency brake off\n".to_owned();
    };
    let until = match b.until {
        Some(u) => format!("until {}", text::utc_seconds(u)),
        None => "until released (fanout-milter brake off)".to_owned(),
    };
    format!(
        "emergency brake ON: messages to {} or more recipients are held\n    since {} by {}, {until}\n    comment: {}\n",
        b.min_audience,
        text::utc_seconds(b.since),
        text::neutralize(&b.by),
        text::neutralize(&b.comment)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brake_is_shown_with_who_and_why_neutralised() {
        assert_eq!(brake_text(None), "emergency brake off\n");
        let b = Brake {
            min_audience: 500,
            since: 1_800_000_000,
            until: Some(1_800_007_200),
            by: "carol\u{202e}".into(),
            comment: "list bug\r\nfake".into(),
        };
        assert_eq!(
            brake_text(Some(&b)),
            "emergency brake ON: messages to 500 or more recipients are held\n    since 2027-01-15T08:00:00Z by carol\\u{202E}, until 2027-01-15T10:00:00Z\n    comment: list bug\\x0D\\x0Afake\n"
        );
        assert_eq!(
            replaced_line(&b),
            "replaced the emergency brake that was on: min audience 500 by carol\\u{202E} \
             since 2027-01-15T08:00:00Z"
        );
        let forever = Brake { until: None, ..b };
        assert!(brake_text(Some(&forever)).contains("until released (fanout-milter brake off)"));
    }
}
