// SPDX-License-Identifier: GPL-3.0-or-later
//! Fuzz target: `fanout_milter::fuzz::config`.

fn main() {
    afl::fuzz!(|data: &[u8]| fanout_milter::fuzz::config::config(data));
}
