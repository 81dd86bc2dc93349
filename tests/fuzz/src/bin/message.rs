// SPDX-License-Identifier: GPL-3.0-or-later
//! Fuzz target: the message path (`fanout_milter::fuzz::message`).

fn main() {
    afl::fuzz!(|data: &[u8]| fanout_milter::fuzz::message::message(data));
}
