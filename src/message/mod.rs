// SPDX-License-Identifier: GPL-3.0-or-later
//! Message header handling: the only place that uses mail-parser.

pub(crate) mod headers;

pub use headers::{HeaderBuffer, HeaderFields, extract};
