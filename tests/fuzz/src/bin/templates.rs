// SPDX-License-Identifier: GPL-3.0-or-later
//! Fuzz target: `fanout_milter::fuzz::templates`.

fn main() {
    afl::fuzz!(|data: &[u8]| fanout_milter::fuzz::templates::templates(data));
}
