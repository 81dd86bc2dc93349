// SPDX-License-Identifier: GPL-3.0-or-later
//! `[notices.*]`: the texts of the notices senders get.

use crate::config::notices::{NoticeKind, NoticeTemplates, Template, check_body, check_subject};
use crate::config::raw::RawNotice;
use std::collections::BTreeMap;

/// Checks each `[notices.KIND]` and puts its texts over the defaults.
pub(super) fn check(
    raw: &BTreeMap<String, RawNotice>,
    report: &mut impl FnMut(&str, String),
) -> NoticeTemplates {
    let mut templates = NoticeTemplates::default();
    for (name, notice) in raw {
        let key = format!("notices.{name}");
        let Some(kind) = NoticeKind::from_name(name) else {
            let kinds: Vec<&str> = NoticeKind::kinds().map(NoticeKind::as_str).into();
            report(
                &key,
                format!(
                    "unknown notice \"{}\": use {}",
                    crate::text::neutralize(name),
                    kinds.join(", ")
                ),
            );
            continue;
        };
        if notice.subject.is_none() && notice.body.is_none() {
            report(&key, "set subject, body or both".into());
            continue;
        }
        let default = templates.get(kind).clone();
        let mut ok = true;
        if let Some(subject) = &notice.subject
            && let Err(e) = check_subject(kind, subject)
        {
            report(&format!("{key}.subject"), e);
            ok = false;
        }
        // A file written with CRLF line ends has them in its multi-line strings.
        let body = notice.body.as_ref().map(|b| b.replace("\r\n", "\n"));
        if let Some(body) = &body
            && let Err(e) = check_body(kind, body)
        {
            report(&format!("{key}.body"), e);
            ok = false;
        }
        if ok {
            templates.set(
                kind,
                Template {
                    subject: notice.subject.clone().unwrap_or(default.subject),
                    body: body.unwrap_or(default.body),
                },
            );
        }
    }
    templates
}
