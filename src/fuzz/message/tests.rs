// SPDX-License-Identifier: GPL-3.0-or-later
use super::*;
use proptest::prelude::*;

fn actions(outcomes: &Outcomes) -> Vec<Option<Action>> {
    outcomes
        .iter()
        .map(|o| o.effect.as_ref().map(|e| e.action))
        .collect()
}

#[test]
fn the_seeds_decode_to_what_they_encode_and_decide_as_the_fixture_says() {
    let seeds = seeds();
    let decided: Vec<Vec<Option<Action>>> = seeds
        .iter()
        .map(|s| {
            assert_eq!(encode(&stages(s)), *s, "round trip");
            actions(&run(&stages(s)))
        })
        .collect();
    assert_eq!(decided[0], [Some(Action::Accept)], "a small message");
    assert_eq!(
        decided[1],
        [Some(Action::Reject)],
        "an allowed sender to the big restricted list: 840,000 is past the audience \
         reject limit"
    );
    assert_eq!(
        decided[2],
        [Some(Action::Quarantine)],
        "hidden lists by Bcc"
    );
    assert_eq!(
        decided[3][2],
        Some(Action::Reject),
        "the third reply of a storm: {:?}",
        decided[3]
    );
    assert_eq!(
        decided[4],
        [Some(Action::Quarantine)],
        "30 external recipients, 2,000 more Received headers"
    );
    assert_eq!(
        decided[5],
        [None],
        "a hold without a valid queue id is a fault"
    );
    assert_eq!(
        decided[6],
        [Some(Action::Quarantine)],
        "a copy the worker is waiting for is held for it"
    );
    assert_eq!(
        decided[7],
        [Some(Action::Quarantine)],
        "a late copy is held"
    );
    let late = run(&stages(&seeds[7]));
    assert!(
        late[0]
            .effect
            .as_ref()
            .and_then(|e| e.hold.as_deref())
            .is_some_and(|h| h.contains("request 3 is over")),
        "{late:?}"
    );
    assert_eq!(
        run(&stages(&seeds[5]))[0].fault.as_ref().map(|f| f.code),
        Some("451")
    );
}

#[test]
fn a_message_left_open_is_ended_and_an_empty_input_decides_nothing() {
    assert!(run(&[]).is_empty());
    let open = stages(b"F<ann@example.org>\xffT<bob@example.org>");
    let outcomes = run(&open);
    assert_eq!(actions(&outcomes), [Some(Action::Accept)]);
    assert_eq!(
        run(&stages(b"E4AbCdEf001"))[0]
            .fault
            .as_ref()
            .map(|f| f.code),
        Some("451")
    );
}

#[test]
fn records_split_on_0xff_and_fields_on_0xfe() {
    assert_eq!(
        stages(b"Hname\xfeva\x00l\xff\xffZ?\xffM\x02\xffA"),
        [
            Stage::Header(b"name".to_vec(), b"va\x00l".to_vec()),
            Stage::Repeat(32),
            Stage::Abort
        ]
    );
    assert_eq!(
        stages(b"Llogin\xfe<a@b>"),
        [Stage::Mail {
            sender: b"<a@b>".to_vec(),
            login: Some(b"login".to_vec())
        }]
    );
}

/// Bytes that break naive code: line breaks, NUL, bidi, invalid UTF-8, encoded words.
fn nasty() -> impl Strategy<Value = Vec<u8>> {
    let atoms = prop_oneof![
        Just(b"\r\n".to_vec()),
        Just(b"\n\t".to_vec()),
        Just(b"\x00".to_vec()),
        Just("\u{202e}".as_bytes().to_vec()),
        Just(b"\xc3\x28\xff".to_vec()),
        Just(b"=?utf-8?b?4oCuCg==?=".to_vec()),
        Just(b"staff@example.org".to_vec()),
        Just(b"<ward@example.org>".to_vec()),
        Just(b"\"a,b\" <x@y>, ".to_vec()),
        Just(b"@".to_vec()),
        Just(b"{subject}{reason}{{".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(atoms, 0..6).prop_map(|v| v.concat())
}

fn stage() -> impl Strategy<Value = Stage> {
    let name = prop_oneof![
        Just(b"To".to_vec()),
        Just(b"Cc".to_vec()),
        Just(b"Subject".to_vec()),
        Just(b"From".to_vec()),
        Just(b"In-Reply-To".to_vec()),
        Just(b"References".to_vec()),
        Just(b"X-Fanout-Verdict".to_vec()),
        Just(b"X-Fanout-Released".to_vec()),
        nasty(),
    ];
    prop_oneof![
        1 => (nasty(), any::<bool>()).prop_map(|(client, local)| Stage::Connect { client, local }),
        1 => (nasty(), proptest::option::of(nasty()))
            .prop_map(|(sender, login)| Stage::Mail { sender, login }),
        4 => nasty().prop_map(Stage::Rcpt),
        4 => (name, nasty()).prop_map(|(n, v)| Stage::Header(n, v)),
        1 => (0usize..300).prop_map(Stage::Repeat),
        1 => prop_oneof![Just(b"4AbCdEf001".to_vec()), nasty()].prop_map(Stage::Eom),
        1 => Just(Stage::Abort),
    ]
}

proptest! {
    #![proptest_config(crate::fuzz::proptest_config(128, 21))]

    /// Any session of stages: no panic, and every effect passes the checks.
    #[test]
    fn any_session_ends_in_checked_effects(
        mut stages in proptest::collection::vec(stage(), 0..40),
    ) {
        stages.insert(0, Stage::Mail { sender: b"<ann@example.org>".to_vec(), login: None });
        let ends = stages.iter().filter(|s| matches!(s, Stage::Eom(_))).count();
        let outcomes = run(&stages);
        prop_assert!(outcomes.len() >= ends);
    }

    /// The byte format itself, whatever the bytes.
    #[test]
    fn any_bytes_run(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        message(&data);
    }
}
