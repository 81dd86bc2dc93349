// SPDX-License-Identifier: GPL-3.0-or-later
//! Maps TOML byte offsets to dotted keys and back, so that every configuration error
//! names its file, line and key.

use std::ops::Range;
use toml::de::{DeTable, DeValue};

#[derive(Debug)]
struct Entry {
    path: String,
    key: Range<usize>,
    value: Range<usize>,
}

/// Every key of a document with the spans of its key and value.
#[derive(Debug, Default)]
pub struct SpanIndex {
    entries: Vec<Entry>,
}

impl SpanIndex {
    /// Indexes a document; fails on a TOML syntax error.
    pub fn build(src: &str) -> Result<Self, toml::de::Error> {
        let root = DeTable::parse(src)?;
        let mut index = SpanIndex::default();
        index.add_table("", root.get_ref());
        Ok(index)
    }

    fn add_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.entries.push(Entry {
                path: path.clone(),
                key: key.span(),
                value: value.span(),
            });
            self.add_value(&path, value.get_ref());
        }
    }

    fn add_value(&mut self, path: &str, value: &DeValue<'_>) {
        match value {
            DeValue::Table(t) => self.add_table(path, t),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    self.entries.push(Entry {
                        path: item_path.clone(),
                        key: item.span(),
                        value: item.span(),
                    });
                    self.add_value(&item_path, item.get_ref());
                }
            }
            _ => {}
        }
    }

    /// The innermost key whose key or value span holds `offset`.
    pub fn path_at(&self, offset: usize) -> Option<&str> {
        self.entries
            .iter()
            .filter(|e| e.key.contains(&offset) || e.value.contains(&offset))
            .min_by_key(|e| {
                let span = if e.key.contains(&offset) {
                    &e.key
                } else {
                    &e.value
                };
                span.end - span.start
            })
            .map(|e| e.path.as_str())
    }

    /// Where a dotted key is written; for a key left at its default, where its nearest
    /// written parent is.
    pub fn offset_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == path) {
                return Some(e.key.start);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[milter]\nlisten = \"x\"\n\n[limits.envelope]\ntag = 5\n\n[exempt]\nsenders = [\"a\", \"b\"]\n";

    #[test]
    fn finds_keys_by_offset_and_offsets_by_key() {
        let idx = SpanIndex::build(DOC).unwrap();
        let tag = DOC.find("tag").unwrap();
        assert_eq!(idx.path_at(tag), Some("limits.envelope.tag"));
        assert_eq!(idx.path_at(tag + 6), Some("limits.envelope.tag"));
        let b = DOC.find("\"b\"").unwrap();
        assert_eq!(idx.path_at(b), Some("exempt.senders[1]"));
        assert_eq!(
            line_col(DOC, idx.offset_of("limits.envelope.tag").unwrap()),
            (5, 1)
        );
        assert_eq!(
            line_col(DOC, idx.offset_of("exempt.senders[1]").unwrap()),
            (8, 17)
        );
        let parent = idx.offset_of("limits.envelope.reject").unwrap();
        assert_eq!(line_col(DOC, parent).0, 4, "a default points at its table");
        assert_eq!(idx.offset_of("nothing.here"), None);
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("a\nbé c", 5), (2, 3));
        assert_eq!(line_col("", 10), (1, 1));
    }
}
