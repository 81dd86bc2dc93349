// SPDX-License-Identifier: GPL-3.0-or-later
//! Policy core benchmark: one evaluation for envelopes of 1 to 100,000 recipients.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fanout_milter::policy::{
    AddressGlobs, DomainSet, Levels, MessageFacts, Mode, Policy, TrustedSenders, evaluate,
};
use std::hint::black_box;

fn policy() -> Policy {
    Policy {
        mode: Mode::Enforce,
        internal: DomainSet::new(["example.org", "*.example.org"]).expect("valid domains"),
        envelope: Levels {
            tag: 50,
            quarantine: 200,
            reject: 2000,
            monitor: false,
        },
        external: Levels {
            tag: 0,
            quarantine: 100,
            reject: 0,
            monitor: false,
        },
        exempt: TrustedSenders {
            logins: AddressGlobs::default(),
            envelope: AddressGlobs::new(["bulk@example.org"]).expect("valid globs"),
        },
        ..Policy::default()
    }
}

fn facts(n: usize) -> MessageFacts {
    let mut f = MessageFacts {
        sender: "ann@example.org".into(),
        ..Default::default()
    };
    for i in 0..n {
        let domain = if i % 10 == 0 {
            "partner.example"
        } else {
            "dept.example.org"
        };
        f.recipients.add(&format!("<user{i}@{domain}>"));
    }
    f
}

fn bench_evaluate(c: &mut Criterion) {
    let p = policy();
    let mut group = c.benchmark_group("evaluate");
    for n in [1usize, 10, 1_000, 100_000] {
        let f = facts(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &f, |b, f| {
            b.iter(|| evaluate(black_box(&p), black_box(f), black_box(&Default::default())))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_evaluate);
criterion_main!(benches);
