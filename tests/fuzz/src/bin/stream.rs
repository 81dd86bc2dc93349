// SPDX-License-Identifier: GPL-3.0-or-later
//! Fuzz target: the raw milter byte stream into the daemon (`fanout_milter::fuzz::stream`).

fn main() {
    afl::fuzz!(|data: &[u8]| fanout_milter::fuzz::stream::stream(data));
}
