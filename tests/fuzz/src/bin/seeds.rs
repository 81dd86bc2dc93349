// SPDX-License-Identifier: GPL-3.0-or-later
//! Writes every target's seed corpus: `seeds DIR` makes `DIR/TARGET/seed-N`.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::args_os().nth(1).expect("usage: seeds DIR"));
    for (target, seeds) in fanout_milter::fuzz::seeds() {
        let into = dir.join(target);
        std::fs::create_dir_all(&into).expect("corpus directory");
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(into.join(format!("seed-{i:03}")), seed).expect("seed file");
        }
    }
}
