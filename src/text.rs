// SPDX-License-Identifier: GPL-3.0-or-later
//! The one neutralising function for text that comes from mail, the directory or a
//! user (subjects, addresses, DNs, list names, filters) before it is printed, logged,
//! put in a header, an SMTP reply, a notice or a page.
//!
//! Pure: no I/O, so the policy core may use it.

use std::borrow::Cow;
use std::fmt::Write as _;

/// How many characters of a subject are kept wherever one is stored or echoed (state,
/// records, replies, notices, listings).
pub const MAX_SUBJECT_CHARS: usize = 200;

/// Whether a character must not reach a terminal, a log line or a header as it is:
/// C0 and C1 controls (CR and LF among them), DEL, the line and paragraph separators,
/// and the invisible format characters (bidi embeddings, overrides and isolates, the
/// directional marks, zero-width characters, the byte order mark).
pub(crate) fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// Neutralises text for one line of output: every unsafe character (see above) becomes
/// a visible escape (`\x1B`, `\u{202E}`), a tab becomes a space. Text without such
/// characters is returned as it is, without copying.
pub fn neutralize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\t' {
            out.push(' ');
        } else if !is_unsafe(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            let _ = write!(out, "\\x{:02X}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:04X}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// [`neutralize`], and whether it escaped anything: a web page shows such text
/// flagged, so that a reader knows the original hid characters.
pub fn neutralize_flagged(text: &str) -> (Cow<'_, str>, bool) {
    let out = neutralize(text);
    let flagged = matches!(out, Cow::Owned(_));
    (out, flagged)
}

/// [`neutralize`] for serialised JSON (`serde_json` output, compact or pretty): JSON
/// already escapes C0 controls inside strings, so every other unsafe character (DEL,
/// C1 controls, bidi and format characters) becomes a `\uXXXX` escape, which keeps the
/// document valid and its values unchanged for a parser. Line feeds (only ever between
/// values) stay.
pub fn neutralize_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c != '\n' && is_unsafe(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`neutralize`] for a block of lines (a report to print): each line neutralised, the
/// line feeds between them kept. A carriage return is escaped like any control.
pub fn neutralize_lines(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(text);
    }
    let lines: Vec<Cow<'_, str>> = text.split('\n').map(neutralize).collect();
    Cow::Owned(lines.join("\n"))
}

/// [`neutralize`], then at most `max` characters, the last one `…` when cut.
pub fn neutralize_capped(text: &str, max: usize) -> String {
    let flat = neutralize(text);
    if flat.chars().count() <= max {
        return flat.into_owned();
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// At most `max` characters of raw text (nothing escaped), the last one `…` when cut:
/// for values that are stored and neutralised later, where they are shown.
pub fn cap(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some(_) => {
            let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
            cut.push('…');
            Cow::Owned(cut)
        }
    }
}

/// `secs` since the epoch as RFC 3339 UTC to the second (`2026-12-01T06:28:43Z`), or
/// `@SECS` for a time after 9999 (a corrupt stored or received value), never a panic.
pub fn utc_seconds(secs: u64) -> String {
    /// 10000-01-01T00:00:00Z: the first second RFC 3339 cannot write.
    const YEAR_10000: u64 = 253_402_300_800;
    if secs < YEAR_10000 {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        format!("@{secs}")
    }
}

/// A time as people read it in a notice, e.g. "Wednesday 2 December 2026 at 17:55 UTC"
/// (seconds since the epoch; minutes rounded down).
pub fn plain_utc(secs: u64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[weekday repr:long] [day padding:none] [month repr:long] [year] at [hour]:[minute] UTC"
    );
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| utc_seconds(secs))
}

/// Fills the `{name}` placeholders of `template` from `values` in one pass over the
/// template: a value is inserted as it is and never scanned again, so a placeholder
/// inside a value (a subject that says `{reason}`) stays text. Unknown placeholders and
/// a `{` without its `}` are kept as they are. The result is at most the template's
/// length plus one copy of a value per placeholder in the template.
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v, close))
        });
        match value {
            Some((v, close)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_plainly_in_notices() {
        assert_eq!(
            plain_utc(1_796_233_500),
            "Wednesday 2 December 2026 at 17:45 UTC"
        );
        assert_eq!(plain_utc(0), "Thursday 1 January 1970 at 00:00 UTC");
        assert_eq!(plain_utc(u64::MAX), utc_seconds(u64::MAX));
    }

    #[test]
    fn any_stored_time_is_written_without_a_panic() {
        assert_eq!(utc_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_seconds(1_800_021_600), "2027-01-15T14:00:00Z");
        assert_eq!(utc_seconds(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(utc_seconds(253_402_300_800), "@253402300800");
        assert_eq!(utc_seconds(u64::MAX), "@18446744073709551615");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let s = "Ärzte: Dienstplan für Station 4 <a@b>";
        assert!(matches!(neutralize(s), Cow::Borrowed(x) if x == s));
    }

    #[test]
    fn line_breaks_and_escapes_become_visible() {
        assert_eq!(neutralize("a\r\nBcc: x"), "a\\x0D\\x0ABcc: x");
        assert_eq!(neutralize("\u{1b}]0;pwned\u{7}"), "\\x1B]0;pwned\\x07");
        assert_eq!(neutralize("a\u{85}b\u{7f}"), "a\\x85b\\x7F");
        assert_eq!(neutralize("a\tb"), "a b");
    }

    #[test]
    fn bidi_and_format_characters_become_visible() {
        assert_eq!(neutralize("abc\u{202E}fdp.exe"), "abc\\u{202E}fdp.exe");
        for c in [
            '\u{200E}', '\u{200F}', '\u{202A}', '\u{202D}', '\u{2066}', '\u{2069}', '\u{2028}',
            '\u{2029}', '\u{200B}', '\u{FEFF}', '\u{061C}', '\u{00AD}',
        ] {
            let input = format!("x{c}y");
            let out = neutralize(&input);
            assert!(!out.contains(c), "{c:?} survived: {out}");
            assert!(out.starts_with("x\\") && out.ends_with('y'), "{out}");
        }
    }

    #[test]
    fn render_fills_each_placeholder_once_and_keeps_unknown_ones() {
        let v = [("subject", "S {reason} {subject}"), ("reason", "R")];
        assert_eq!(
            render("{subject}: {reason} {nope} {reason", &v),
            "S {reason} {subject}: R {nope} {reason"
        );
        assert_eq!(render("{{reason}}", &v), "{R}");
        assert_eq!(render("", &v), "");
        assert_eq!(render("ä{reason}ö", &v), "äRö");
    }

    #[test]
    fn a_subject_full_of_placeholders_renders_in_bounded_size() {
        let subject = "{reason}".repeat(8_000);
        let reason = format!("storm on \"{subject}\"");
        let out = render(
            "{subject} / {reason}",
            &[("subject", &subject), ("reason", &reason)],
        );
        assert_eq!(out.len(), subject.len() + 3 + reason.len());
    }

    #[test]
    fn lines_keep_their_line_feeds_and_lose_the_rest() {
        assert!(matches!(
            neutralize_lines("a\nb\n"),
            Cow::Borrowed("a\nb\n")
        ));
        assert_eq!(
            neutralize_lines("a\u{1b}[2J\r\nb\u{202e}\n"),
            "a\\x1B[2J\\x0D\nb\\u{202E}\n"
        );
    }

    #[test]
    fn json_stays_valid_and_loses_raw_bidi_and_c1() {
        let value = serde_json::json!({"s": "a\u{202e}b\u{9b}c\u{7f}\r\n\u{1b}"});
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let safe = neutralize_json(&pretty);
        assert!(
            !safe.contains(['\u{202e}', '\u{9b}', '\u{7f}', '\r', '\u{1b}']),
            "{safe}"
        );
        assert!(safe.contains('\n'), "pretty printing kept: {safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
        assert!(matches!(neutralize_json("{\n}"), Cow::Borrowed(_)));
    }

    #[test]
    fn capping_counts_characters_not_bytes() {
        assert_eq!(neutralize_capped("äääää", 5), "äääää");
        assert_eq!(neutralize_capped("ääääää", 5), "ääää…");
        assert_eq!(neutralize_capped("a\nb", 10), "a\\x0Ab");
        assert_eq!(cap("äääää", 5), "äääää");
        assert_eq!(cap("ääääää", 5), "ääää…");
        assert_eq!(cap("a\nb", 10), "a\nb");
    }
}
