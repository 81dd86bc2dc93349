// SPDX-License-Identifier: GPL-3.0-or-later
//! The review desk: a web page, served by the unprivileged daemon, where the people on
//! duty see held messages and ask for them to be released or discarded.

pub(crate) mod users;
