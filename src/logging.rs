// SPDX-License-Identifier: GPL-3.0-or-later
//! tracing-subscriber setup: text to stderr (journald adds its own timestamps) or JSON.
//!
//! Every line written passes [`safe_line`]: log fields carry subjects, addresses, list
//! names, DNs and reasons from mail and the directory, and none of them may add a
//! line to the journal, move a terminal's cursor or reverse the text around it.

use crate::config::LogFormat;
use crate::text;
use std::borrow::Cow;
use std::io;
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(level: &str, format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| {
            EnvFilter::try_new(format!("{level},indymilter=warn"))
                .unwrap_or_else(|_| EnvFilter::new("info,indymilter=warn"))
        });
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    if let Err(e) = subscriber(filter, format, under_journald, io::stderr).try_init() {
        eprintln!("fanout-milter: logging already initialised: {e}");
    }
}

/// The subscriber [`init`] installs, writing to `writer`.
pub fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    under_journald: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let json = format == LogFormat::Json;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(SafeWriter {
            inner: writer,
            json,
        })
        .with_target(false)
        .with_ansi(false);
    match (format, under_journald) {
        (LogFormat::Json, _) => Box::new(builder.json().flatten_event(true).finish()),
        (LogFormat::Text, true) => Box::new(builder.without_time().finish()),
        (LogFormat::Text, false) => Box::new(builder.finish()),
    }
}

/// One formatted log line (with its final line feed) made safe: in text, every
/// control, line break and bidi/format character of the line becomes a visible escape
/// ([`text::neutralize`]); in JSON, which already escapes C0 controls, the others
/// become `\uXXXX` escapes ([`text::neutralize_json`]), so the line stays valid JSON.
pub fn safe_line(line: &str, json: bool) -> Cow<'_, str> {
    let body = line.strip_suffix('\n').unwrap_or(line);
    if !json {
        return match text::neutralize(body) {
            Cow::Borrowed(_) => Cow::Borrowed(line),
            Cow::Owned(mut safe) => {
                safe.push('\n');
                Cow::Owned(safe)
            }
        };
    }
    match text::neutralize_json(body) {
        Cow::Borrowed(_) => Cow::Borrowed(line),
        Cow::Owned(mut safe) => {
            safe.push('\n');
            Cow::Owned(safe)
        }
    }
}

/// A [`MakeWriter`] whose writers pass each line through [`safe_line`].
struct SafeWriter<M> {
    inner: M,
    json: bool,
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for SafeWriter<M> {
    type Writer = SafeLines<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        SafeLines {
            inner: self.inner.make_writer(),
            json: self.json,
        }
    }
}

/// The writer of [`SafeWriter`]: the fmt layer writes each event as one buffer.
struct SafeLines<W> {
    inner: W,
    json: bool,
}

impl<W: io::Write> io::Write for SafeLines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        self.inner
            .write_all(safe_line(&line, self.json).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_keep_one_line_feed_and_escape_the_rest() {
        assert!(matches!(safe_line("a b\n", false), Cow::Borrowed("a b\n")));
        assert_eq!(
            safe_line("reason=list x\r\nBcc: y \u{1b}[2J \u{202e}\n", false),
            "reason=list x\\x0D\\x0ABcc: y \\x1B[2J \\u{202E}\n"
        );
        let json = safe_line("{\"s\":\"a\u{202e}b\u{9b}c\\n\"}\n", true);
        assert_eq!(json, "{\"s\":\"a\\u202eb\\u009bc\\n\"}\n");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["s"], "a\u{202e}b\u{9b}c\n");
    }
}
