// SPDX-License-Identifier: GPL-3.0-or-later
//! Snapshot tests against the in-memory Active Directory fake: ranged attributes,
//! page caps, entry keys, limits and faults, dynamic lists, addresses, the local join,
//! staleness and the snapshot file.

use super::client::Entry;
use super::client::{LdapFault, LdapServer, Scope};
use super::fake::{FakeDirectory, Filter, strings};
use super::*;
use crate::config::Config;
use crate::directory::{Directory, DriftMode};
use crate::policy::{Action, MessageFacts, Policy, Verdict, evaluate};
use std::path::Path;

const BASE: &str = "dc=corp,dc=example";
const STAFF: &str = "ou=staff,dc=corp,dc=example";
const GROUPS: &str = "ou=groups,dc=corp,dc=example";

/// A configuration with one LDAP source on `dc=corp,dc=example` for `corp.example`;
/// `keys` go into its `[[directory]]` table (and may open further tables). `base_dns`
/// is set unless `keys` sets it.
fn config(dir: &Path, keys: &str) -> Config {
    let base_dns = if keys.contains("base_dns") {
        String::new()
    } else {
        format!("base_dns = [\"{BASE}\"]")
    };
    let text = format!(
        r#"
[domains]
internal = ["corp.example"]

[quarantine]
state_dir = "{state}"

[[directory]]
type = "ldap"
url = "ldap://dc1.corp.example"
domains = ["corp.example"]
{base_dns}
{keys}
"#,
        state = dir.join("state").display(),
    );
    crate::config::parse(&text, &dir.join("fanout-milter.toml")).expect("configuration")
}

fn settings(config: &Config) -> &LdapSettings {
    config.directories[0].ldap.as_ref().expect("an LDAP source")
}

async fn snapshot(fake: &mut FakeDirectory, config: &Config) -> Snapshot {
    take(fake, settings(config)).await.expect("snapshot")
}

/// The directory of `config` with `snapshot` (if any), staleness judged at `now`.
fn load(config: &Config, snapshot: Option<&Snapshot>, now: SystemTime) -> Directory {
    let by_source = snapshot
        .map(|s| (s.source.clone(), Arc::new(s.clone())))
        .into_iter()
        .collect();
    Directory::load(config, DriftMode::ReadOnly, &Snapshots { by_source, now }).expect("load")
}

/// What `policy` decides for a message from ann to `rcpt`.
fn verdict(policy: &Policy, d: &Directory, rcpt: &str) -> Verdict {
    let facts = MessageFacts {
        sender: "ann@corp.example".into(),
        recipients: [rcpt].into_iter().collect(),
        audience: d.audience_facts([rcpt]),
        ..MessageFacts::default()
    };
    evaluate(policy, &facts, &Default::default()).verdict
}

fn rules(v: &Verdict) -> Vec<&'static str> {
    v.reasons.iter().map(|r| r.rule).collect()
}

fn staff_dn(cn: &str) -> String {
    format!("cn={cn},{STAFF}")
}

/// Adds `n` users `u0@corp.example`... below `ou=staff`; returns their DNs.
fn staff(fake: &mut FakeDirectory, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let dn = staff_dn(&format!("User {i}"));
            fake.person(&dn, &format!("u{i}@corp.example"));
            dn
        })
        .collect()
}

fn total(d: &Directory, rcpt: &str) -> u64 {
    d.audience_facts([rcpt]).expect("configured").total
}

#[tokio::test]
async fn the_fake_caps_pages_and_forces_ranges_like_active_directory() {
    let mut fake = FakeDirectory::active_directory();
    let members = staff(&mut fake, 1600);
    let group = format!("cn=All,{BASE}");
    fake.group(&group, Some("all@corp.example"), &members);
    let attrs = strings(&["member", "objectGUID"]);

    let page = fake
        .search_page(&group, Scope::Base, "(objectClass=*)", &attrs, None)
        .await
        .expect("base search");
    let e = &page.entries[0];
    assert_eq!(e.values("member").count(), 0, "no plain member beyond 1500");
    assert_eq!(e.values("member;range=0-1499").count(), 1500);
    assert_eq!(e.bin_attrs["objectGUID"][0].len(), 16);
    assert!(e.values("entryUUID").next().is_none());

    let rest = strings(&["member;range=1500-*"]);
    let page = fake
        .search_page(&group, Scope::Base, "(objectClass=*)", &rest, None)
        .await
        .expect("range search");
    assert_eq!(page.entries[0].values("member;range=1500-*").count(), 100);

    let page = fake
        .search_page(
            STAFF,
            Scope::Subtree,
            "(mail=*)",
            &attrs,
            Some((5000, Vec::new())),
        )
        .await
        .expect("paged search");
    assert_eq!(page.entries.len(), 1000, "MaxPageSize whatever is asked");
    let cookie = page.next.expect("more pages");
    let page = fake
        .search_page(
            STAFF,
            Scope::Subtree,
            "(mail=*)",
            &attrs,
            Some((5000, cookie)),
        )
        .await
        .expect("second page");
    assert_eq!((page.entries.len(), page.next), (600, None));

    let unpaged = fake
        .search_page(STAFF, Scope::Subtree, "(mail=*)", &attrs, None)
        .await
        .expect_err("unpaged searches stop at MaxPageSize");
    assert!(
        matches!(unpaged, LdapFault::Search { rc: 4, .. }),
        "{unpaged}"
    );
    assert_eq!(fake.searches, 5);
}

#[test]
fn the_fake_evaluates_the_filters_the_code_sends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "");
    let entry = |attrs: &[(&str, &[&str])]| Entry {
        dn: staff_dn("X"),
        attrs: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), strings(v)))
            .collect(),
        bin_attrs: HashMap::new(),
    };
    let proxy_only = entry(&[
        ("objectClass", &["user"]),
        ("proxyAddresses", &["X500:/o=Corp", "SMTP:Ann@corp.example"]),
    ]);
    let x500_only = entry(&[
        ("objectClass", &["user"]),
        ("proxyAddresses", &["X500:/o=Corp"]),
    ]);
    let mailless_group = entry(&[("objectClass", &["top", "Group"])]);
    let snapshot = Filter::parse(&fetch::snapshot_filter(settings(&config))).expect("parses");
    assert!(snapshot.matches(&proxy_only), "smtp:* matches SMTP:");
    assert!(
        snapshot.matches(&mailless_group),
        "objectClass=group, any case"
    );
    assert!(!snapshot.matches(&x500_only));

    let person = entry(&[
        ("mail", &["Ann@Corp.Example"]),
        ("department", &["Pharmacy"]),
        ("description", &["50% off"]),
        ("employeeNumber", &["42"]),
    ]);
    for (filter, matches) in [
        ("(MAIL=ann@corp.example)", true),
        ("(&(mail=*)(!(department=pharmacy)))", false),
        ("(|(department=Astronomy)(mail=ann@*.example))", true),
        ("(mail=*n@c*p*)", true),
        ("(mail=*n@x*)", false),
        ("(description=50\\25 off)", true),
        ("(employeeNumber>=100)", false),
        ("(employeeNumber<=100)", true),
        ("(objectClass=*)", true),
        ("(cn=*)", false),
    ] {
        let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(f.matches(&person), matches, "{filter}");
    }
    for bad in [
        "(memberOf:1.2.840.113556.1.4.1941:=cn=x)",
        "(mail=a)(mail=b)",
        "(&)",
        "(mail=\\zz)",
    ] {
        assert!(Filter::parse(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn ranged_groups_are_read_to_the_end() {
    // (members, range round trips): at the cap no range, one above it one more search.
    for (size, range_trips) in [(1500, 0), (1501, 1), (3000, 1), (3001, 2), (3500, 2)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path(), "");
        let mut fake = FakeDirectory::active_directory();
        let members = staff(&mut fake, size);
        let group = format!("cn=All Staff,{BASE}");
        fake.group(&group, Some("all-staff@corp.example"), &members);

        let snap = snapshot(&mut fake, &config).await;
        assert_eq!(fake.range_searches(), range_trips, "{size} members");
        let pages = (size + 1).div_ceil(1000) as u64;
        assert_eq!(snap.searches, 1 + pages + range_trips as u64, "{size}");
        assert_eq!(snap.searches, fake.searches, "{size}");
        assert!(snap.active_directory);
        let ranges: Vec<&str> = fake
            .log
            .iter()
            .filter(|l| l.attrs[0].contains(";range="))
            .map(|l| {
                assert_eq!((l.base.as_str(), l.scope), (group.as_str(), Scope::Base));
                l.attrs[0].as_str()
            })
            .collect();
        let expected = ["member;range=1500-*", "member;range=3000-*"];
        assert_eq!(ranges, expected[..range_trips], "{size}");

        let d = load(&config, Some(&snap), SystemTime::now());
        let list = d.index.list("all-staff@corp.example").expect("list");
        assert_eq!(list.mailboxes.len(), size, "every member, once");
        assert_eq!(list.unknown, 0);
        assert_eq!(total(&d, "all-staff@corp.example"), size as u64);
        let names: std::collections::HashSet<&str> = list
            .mailboxes
            .iter()
            .map(|&m| d.index.mailbox_name(m))
            .collect();
        let expected: Vec<String> = (0..size).map(|i| format!("u{i}@corp.example")).collect();
        assert!(
            expected.iter().all(|a| names.contains(a.as_str())),
            "{size}"
        );
    }
}

#[tokio::test]
async fn pages_are_capped_by_the_server_whatever_size_is_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "page_size = 5000");
    let mut fake = FakeDirectory::active_directory();
    let members = staff(&mut fake, 2499);
    fake.group(
        &format!("cn=All,{BASE}"),
        Some("all@corp.example"),
        &members,
    );

    let snap = snapshot(&mut fake, &config).await;
    let pages: Vec<(Option<u32>, Option<usize>)> = fake
        .searches_of(BASE)
        .iter()
        .map(|l| (l.page_size, l.returned))
        .collect();
    assert_eq!(
        pages,
        [
            (Some(5000), Some(1000)),
            (Some(5000), Some(1000)),
            (Some(5000), Some(500))
        ]
    );
    assert_eq!(snap.stats.entries, 2500);
    assert_eq!(snap.searches, 1 + 3 + 1, "root, three pages, one range");
    let d = load(&config, Some(&snap), SystemTime::now());
    assert_eq!(total(&d, "all@corp.example"), 2499);
}

#[tokio::test]
async fn object_guid_is_the_entry_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &format!("base_dns = [\"{BASE}\", \"{STAFF}\"]"));
    let mut fake = FakeDirectory::active_directory();
    let members = staff(&mut fake, 3);
    let guid = fake.group(
        &format!("cn=Team,{GROUPS}"),
        Some("team@corp.example"),
        &members,
    );
    // Moved while the snapshot was read: seen under its old and its new DN.
    let moved = [7u8; 16];
    for ou in ["ou=old", "ou=new"] {
        fake.add_with_guid(
            &format!("cn=Moved,{ou},{BASE}"),
            moved,
            vec![
                ("objectClass", strings(&["user"])),
                ("mail", strings(&["moved@corp.example"])),
            ],
        );
    }

    let fetched = fetch::fetch(&mut fake, settings(&config))
        .await
        .expect("fetch");
    assert_eq!(
        fake.searches_of(STAFF)[0].returned,
        Some(3),
        "the second base returns the users again"
    );
    assert_eq!(
        fetched.nodes.len(),
        5,
        "3 users, the group, the moved user once"
    );
    let team = fetched
        .lists
        .iter()
        .map(|(_, e)| e)
        .find(|e| e.addresses.iter().any(|m| m == "team@corp.example"))
        .expect("team");
    let hex: String = guid.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(team.key, hex);

    // A configured base that is gone fails the refresh: no smaller snapshot.
    fake.missing_bases.push(STAFF.into());
    let e = take(&mut fake, settings(&config))
        .await
        .expect_err("a base that does not exist");
    assert!(matches!(e, LdapFault::Search { rc: 32, .. }), "{e}");
    let mut empty = FakeDirectory::active_directory();
    let e = take(&mut empty, settings(&config))
        .await
        .expect_err("nothing below the base");
    assert!(matches!(e, LdapFault::Search { rc: 32, .. }), "{e}");
}

#[tokio::test]
async fn without_the_paging_control_searches_are_unpaged_and_limits_fail_the_take() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "");
    let mut fake = FakeDirectory::other(false);
    let members = staff(&mut fake, 30);
    fake.group(
        &format!("cn=Team,{GROUPS}"),
        Some("team@corp.example"),
        &members,
    );

    let snap = snapshot(&mut fake, &config).await;
    assert!(!snap.active_directory);
    assert!(
        fake.log.iter().all(|l| l.page_size.is_none()),
        "{:?}",
        fake.log
    );
    assert_eq!(snap.searches, 2);
    let d = load(&config, Some(&snap), SystemTime::now());
    assert_eq!(total(&d, "team@corp.example"), 30);

    fake.size_limit = Some(20);
    let e = take(&mut fake, settings(&config))
        .await
        .expect_err("31 entries over a size limit of 20");
    assert!(matches!(e, LdapFault::Search { rc: 4, .. }), "{e}");
    assert!(e.fails_refresh());

    let mut fake = FakeDirectory::active_directory();
    let members = staff(&mut fake, 2500);
    fake.group(
        &format!("cn=All,{GROUPS}"),
        Some("all@corp.example"),
        &members,
    );
    fake.paged_limit = Some(2000);
    let e = take(&mut fake, settings(&config))
        .await
        .expect_err("2501 entries over a paged limit of 2000");
    assert!(matches!(e, LdapFault::Search { rc: 4, .. }), "{e}");
    assert_eq!(fake.searches_of(BASE).len(), 3, "failed on the third page");

    // A root entry hidden by ACLs: paging is tried, Active Directory is not assumed.
    let mut fake = FakeDirectory::active_directory();
    fake.root = None;
    let members = staff(&mut fake, 2);
    fake.group(
        &format!("cn=Team,{GROUPS}"),
        Some("team@corp.example"),
        &members,
    );
    let snap = snapshot(&mut fake, &config).await;
    assert!(!snap.active_directory);
    assert_eq!(fake.searches_of(BASE)[0].page_size, Some(1000));
}

#[tokio::test]
async fn a_connection_dropped_at_any_search_fails_the_whole_take() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "");
    let build = || {
        let mut fake = FakeDirectory::active_directory();
        let members = staff(&mut fake, 1600);
        fake.group(
            &format!("cn=All,{GROUPS}"),
            Some("all@corp.example"),
            &members,
        );
        fake.add(
            &format!("cn=Pharmacy,{GROUPS}"),
            vec![
                ("objectClass", strings(&["msExchDynamicDistributionList"])),
                ("mail", strings(&["pharmacy@corp.example"])),
                ("msExchDynamicDLFilter", strings(&["(mail=u1*)"])),
            ],
        );
        fake
    };
    let mut fake = build();
    let whole = snapshot(&mut fake, &config).await.searches;
    assert_eq!(
        whole,
        1 + 2 + 1 + 1,
        "root, two pages, one range, one dynamic"
    );
    for k in 0..whole {
        let mut fake = build();
        fake.drop_after = Some(k);
        let e = take(&mut fake, settings(&config))
            .await
            .expect_err("dropped connection");
        assert!(matches!(e, LdapFault::Connect { .. }), "after {k}: {e}");
        assert_eq!(fake.searches, k + 1, "nothing is tried after the drop");
    }
}

#[tokio::test]
async fn dynamic_lists_count_their_matches_and_unknown_when_they_cannot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "[expansion]\non_unknown = \"reject\"\n");
    let mut fake = FakeDirectory::active_directory();
    for i in 0..7 {
        fake.add(
            &staff_dn(&format!("Pharmacist {i}")),
            vec![
                ("objectClass", strings(&["user"])),
                ("mail", vec![format!("ph{i}@corp.example")]),
                ("department", strings(&["Pharmacy"])),
            ],
        );
    }
    staff(&mut fake, 5);
    let mut dynamic = |cn: &str, filter: &str, base: Option<&str>| {
        let mut attrs = vec![
            ("objectClass", strings(&["msExchDynamicDistributionList"])),
            ("mail", vec![format!("{cn}@corp.example")]),
            ("msExchDynamicDLFilter", strings(&[filter])),
        ];
        if let Some(b) = base {
            attrs.push(("msExchDynamicDLBaseDN", strings(&[b])));
        }
        fake.add(&format!("cn={cn},{GROUPS}"), attrs);
    };
    dynamic("pharmacy", "(&(mail=*)(department=PHARMACY))", Some(STAFF));
    dynamic("pharmacy-all", "(department=Pharmacy)", None);
    dynamic(
        "gone",
        "(department=Pharmacy)",
        Some("ou=gone,dc=corp,dc=example"),
    );
    dynamic("astronomy", "(department=Astronomy)", Some(STAFF));
    dynamic("broken", "(department=Pharmacy)(x=BROKEN)", Some(STAFF));
    fake.add(
        &format!("cn=Pharmacy URL,{GROUPS}"),
        vec![
            ("objectClass", strings(&["groupOfURLs"])),
            ("mail", strings(&["pharmacy-url@corp.example"])),
            (
                "memberURL",
                vec![format!("ldap:///{BASE}??sub?(department=Pharmacy)")],
            ),
        ],
    );

    let snap = snapshot(&mut fake, &config).await;
    assert_eq!(snap.stats.dynamic_lists, 6);
    assert_eq!(snap.stats.dynamic_unknown, 3, "{:?}", snap.stats);
    assert_eq!(
        fake.log
            .iter()
            .filter(|l| l.filter == "(department=Pharmacy)" && l.base == BASE)
            .count(),
        1,
        "the URL list and the filter list without a base run one search"
    );
    let d = load(&config, Some(&snap), SystemTime::now());
    for list in ["pharmacy", "pharmacy-all", "pharmacy-url"] {
        let a = d
            .audience_facts([format!("{list}@corp.example").as_str()])
            .expect("configured");
        assert_eq!((a.total, a.unknown), (7, 0), "{list}");
    }
    for (list, why) in [
        ("gone", "rc=32"),
        ("astronomy", "matched no entry"),
        ("broken", "is not an LDAP filter"),
    ] {
        let a = d
            .audience_facts([format!("{list}@corp.example").as_str()])
            .expect("configured");
        assert_eq!((a.total, a.unknown), (0, 1), "{list}");
        let reason = a.lists[0].unknown_reason.as_deref().unwrap_or_default();
        assert!(reason.contains(why), "{list}: {reason}");
        let v = verdict(&config.policy, &d, &format!("{list}@corp.example"));
        assert_eq!(v.action, Action::Reject, "{list}: {v:?}");
        assert!(rules(&v).contains(&"expansion.on_unknown"), "{v:?}");
    }
}

#[tokio::test]
async fn dynamic_searches_fail_the_take_only_for_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "");
    for (rc, fails) in [(87, false), (50, false), (11, true), (3, true), (51, true)] {
        let mut fake = FakeDirectory::active_directory();
        staff(&mut fake, 2);
        fake.add(
            &format!("cn=Dyn,{GROUPS}"),
            vec![
                ("objectClass", strings(&["msExchDynamicDistributionList"])),
                ("mail", strings(&["dyn@corp.example"])),
                ("msExchDynamicDLFilter", strings(&["(mail=u*)"])),
            ],
        );
        fake.failing_filters.push(("(mail=u*)".into(), rc));
        let result = take(&mut fake, settings(&config)).await;
        match result {
            Err(LdapFault::Search { rc: got, .. }) if fails => assert_eq!(got, rc),
            Ok(snap) if !fails => {
                assert_eq!(snap.stats.dynamic_unknown, 1, "rc {rc}");
                let d = load(&config, Some(&snap), SystemTime::now());
                let a = d.audience_facts(["dyn@corp.example"]).expect("configured");
                assert_eq!((a.total, a.unknown), (0, 1), "rc {rc}");
            }
            other => panic!("rc {rc}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn proxy_addresses_give_the_primary_and_the_aliases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "");
    let mut fake = FakeDirectory::active_directory();
    let mut members = staff(&mut fake, 2);
    let carl = staff_dn("Carl");
    fake.add(
        &carl,
        vec![
            ("objectClass", strings(&["user"])),
            (
                "proxyAddresses",
                strings(&["smtp:carl@corp.example", "SMTP:Carl.Smith@corp.example"]),
            ),
        ],
    );
    members.push(carl);
    fake.add(
        &format!("cn=Sales,{GROUPS}"),
        vec![
            ("objectClass", strings(&["group"])),
            (
                "proxyAddresses",
                strings(&[
                    "smtp:sales-team@corp.example",
                    "X500:/o=Corp/ou=Exchange/cn=Recipients/cn=sales",
                    "SMTP:Sales@Corp.Example",
                    "smtp:vertrieb@corp.example",
                ]),
            ),
            ("member", members),
        ],
    );

    let snap = snapshot(&mut fake, &config).await;
    assert_eq!(
        snap.stats.no_address, 0,
        "carl is read through proxyAddresses"
    );
    let sales = snap
        .lists
        .iter()
        .find(|l| l.origin.contains("cn=Sales"))
        .expect("sales");
    assert_eq!(sales.address, "sales@corp.example");
    assert_eq!(
        sales.aliases,
        ["sales-team@corp.example", "vertrieb@corp.example"]
    );
    assert!(
        sales
            .members
            .contains(&Member::Address("carl.smith@corp.example".into())),
        "{:?}",
        sales.members
    );

    let d = load(&config, Some(&snap), SystemTime::now());
    assert_eq!(
        d.index.canonical("Sales-Team@corp.example"),
        Some("sales@corp.example")
    );
    let a = d
        .audience_facts(["vertrieb@corp.example"])
        .expect("configured");
    assert_eq!(a.total, 3);
    assert_eq!(&*a.lists[0].address, "sales@corp.example");
    let both = d
        .audience_facts(["sales@corp.example", "sales-team@corp.example"])
        .expect("configured");
    assert_eq!(
        (both.total, both.lists.len()),
        (3, 1),
        "one list, twice named"
    );
}

#[tokio::test]
async fn members_join_locally_and_what_cannot_be_counted_is_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "[expansion]\non_unknown = \"tempfail\"\n");
    let mut fake = FakeDirectory::active_directory();
    fake.person("CN=Ann Lee,OU=Staff,DC=corp,DC=example", "ann@corp.example");
    for (cn, mail) in [
        ("Bob", "bob"),
        ("Carl", "carl"),
        ("Dora", "dora"),
        ("Eve", "eve"),
    ] {
        fake.person(&staff_dn(cn), &format!("{mail}@corp.example"));
    }
    let team = format!("cn=Team,{GROUPS}");
    let inner = format!("cn=Inner,{GROUPS}");
    let empty = format!("cn=Empty,{GROUPS}");
    fake.group(
        &team,
        Some("team@corp.example"),
        &[
            "cn=ann lee, ou=staff, dc=corp, dc=example".into(),
            staff_dn("Ghost"),
            team.to_uppercase(),
            inner.clone(),
            empty.clone(),
        ],
    );
    fake.group(&inner, None, &[staff_dn("Bob"), staff_dn("Carl")]);
    fake.group(&empty, Some("empty@corp.example"), &[]);
    fake.add(
        &format!("cn=Uniq,{GROUPS}"),
        vec![
            ("objectClass", strings(&["groupOfUniqueNames"])),
            ("mail", strings(&["uniq@corp.example"])),
            (
                "uniqueMember",
                vec![
                    format!("{}#'0101'B", staff_dn("Dora")),
                    format!("{}#'1'B", staff_dn("Eve")),
                ],
            ),
        ],
    );

    let snap = snapshot(&mut fake, &config).await;
    assert_eq!(
        (
            snap.stats.dangling,
            snap.stats.empty,
            snap.stats.self_members
        ),
        (1, 1, 1),
        "{:?}",
        snap.stats
    );
    let d = load(&config, Some(&snap), SystemTime::now());
    let t = d.index.list("team@corp.example").expect("team");
    let names: Vec<&str> = t
        .mailboxes
        .iter()
        .map(|&m| d.index.mailbox_name(m))
        .collect();
    assert_eq!(
        names.len(),
        3,
        "ann, and bob and carl through the mail-less group: {names:?}"
    );
    for m in ["ann@corp.example", "bob@corp.example", "carl@corp.example"] {
        assert!(names.contains(&m), "{m} in {names:?}");
    }
    assert_eq!(t.nested_lists, 2);
    assert_eq!(t.unknown, 2, "the dangling member and the empty group");
    assert!(t.cycles.is_empty(), "{:?}", t.cycles);
    let inner_name = entry::normalize_dn(&inner);
    assert!(d.index.list(&inner_name).is_some(), "named by its DN");
    assert_eq!(total(&d, "uniq@corp.example"), 2);

    let v = verdict(&config.policy, &d, "team@corp.example");
    assert_eq!(v.action, Action::Tempfail, "{v:?}");
    let reason = v
        .reasons
        .iter()
        .find(|r| r.rule == "expansion.on_unknown")
        .expect("on_unknown fired");
    assert!(reason.message.contains("2 members"), "{}", reason.message);
    assert!(reason.message.contains("cn=Ghost"), "{}", reason.message);
}

#[test]
fn without_a_snapshot_the_domains_are_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "");
    let d = load(&config, None, SystemTime::now());
    assert!(
        d.report
            .warnings
            .iter()
            .any(|w| w.contains("no snapshot yet")),
        "{:?}",
        d.report.warnings
    );
    for rcpt in ["all-staff@corp.example", "Ann@CORP.example"] {
        let a = d.audience_facts([rcpt]).expect("configured");
        assert!(a.unavailable.is_some(), "{rcpt}");
        let v = verdict(&Policy::default(), &d, rcpt);
        assert_eq!(v.action, Action::Tempfail, "{rcpt}: {v:?}");
        assert_eq!(rules(&v), ["directory.unavailable"]);
    }
    let v = verdict(&Policy::default(), &d, "someone@partner.example");
    assert_eq!(
        v.action,
        Action::Accept,
        "other domains are not held: {v:?}"
    );
}

#[tokio::test]
async fn a_stale_snapshot_is_used_tempfailed_or_unknown_as_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fake = FakeDirectory::active_directory();
    let members = staff(&mut fake, 2);
    fake.group(
        &format!("cn=Team,{GROUPS}"),
        Some("team@corp.example"),
        &members,
    );
    fake.group(
        &format!("cn=Dept,{GROUPS}"),
        Some("dept@corp.example"),
        &[format!("cn=Team,{GROUPS}")],
    );
    let snap = snapshot(&mut fake, &config(dir.path(), "")).await;
    let taken = UNIX_EPOCH + Duration::from_secs(snap.taken_at);
    let mut corrupt = snap.clone();
    corrupt.taken_at = u64::MAX;
    assert_eq!(
        corrupt.age(taken),
        Duration::ZERO,
        "a time no clock reaches is no panic"
    );
    let stale = taken + Duration::from_secs(25 * 3600);
    let fresh = taken + Duration::from_secs(23 * 3600);

    let keys = |on_stale: &str| {
        format!("on_stale = \"{on_stale}\"\n[expansion]\non_unknown = \"reject\"\n")
    };
    for on_stale in ["use_stale", "tempfail", "unknown"] {
        let config = config(dir.path(), &keys(on_stale));
        let d = load(&config, Some(&snap), fresh);
        let v = verdict(&config.policy, &d, "team@corp.example");
        assert_eq!(v.action, Action::Accept, "{on_stale}, fresh: {v:?}");
        assert_eq!(total(&d, "team@corp.example"), 2);

        let d = load(&config, Some(&snap), stale);
        assert!(
            d.report
                .warnings
                .iter()
                .any(|w| w.contains(&format!("on_stale = {on_stale}"))),
            "{:?}",
            d.report.warnings
        );
        let v = verdict(&config.policy, &d, "team@corp.example");
        let a = d.audience_facts(["team@corp.example"]).expect("configured");
        match on_stale {
            "use_stale" => {
                assert_eq!(v.action, Action::Accept, "{v:?}");
                assert_eq!((a.total, a.unknown, a.unavailable), (2, 0, None));
            }
            "tempfail" => {
                assert_eq!(v.action, Action::Tempfail, "{v:?}");
                assert_eq!(rules(&v), ["directory.unavailable"]);
                assert!(
                    a.unavailable
                        .expect("unavailable")
                        .contains("max_staleness")
                );
            }
            _ => {
                assert_eq!(v.action, Action::Reject, "{v:?}");
                assert_eq!(rules(&v), ["expansion.on_unknown"]);
                assert_eq!((a.total, a.unknown), (2, 1));
                let nested = d.audience_facts(["dept@corp.example"]).expect("configured");
                assert_eq!(
                    (nested.total, nested.unknown),
                    (2, 1),
                    "the stale source counts once through a nested list"
                );
            }
        }
    }
}

#[tokio::test]
async fn snapshots_are_saved_and_read_back_only_with_the_same_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "");
    let state = dir.path().join("state");
    assert_eq!(load_saved(&state, settings(&config)), Ok(None), "none yet");

    let mut fake = FakeDirectory::active_directory();
    let members = staff(&mut fake, 3);
    fake.group(
        &format!("cn=Team,{GROUPS}"),
        Some("team@corp.example"),
        &members,
    );
    let snap = snapshot(&mut fake, &config).await;
    save(&state, &snap).expect("save");
    assert_eq!(
        load_saved(&state, settings(&config)),
        Ok(Some(snap.clone()))
    );
    let (saved, errors) = Snapshots::load_saved(&config);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(saved.by_source.get("ldap").map(|s| &**s), Some(&snap));
    let d = Directory::load(&config, DriftMode::ReadOnly, &saved).expect("load");
    assert_eq!(total(&d, "team@corp.example"), 3);

    let other = self::config(dir.path(), &format!("base_dns = [\"{STAFF}\"]"));
    assert_ne!(fingerprint(settings(&other)), snap.fingerprint);
    assert_eq!(
        load_saved(&state, settings(&other)),
        Ok(None),
        "taken with other base_dns"
    );
    let (saved, errors) = Snapshots::load_saved(&other);
    assert!(saved.by_source.is_empty() && errors.is_empty());

    std::fs::write(snapshot_path(&state, "ldap"), "{\"format\":").expect("write");
    let e = load_saved(&state, settings(&config)).expect_err("truncated");
    assert!(e.contains("is not a snapshot"), "{e}");
}

#[tokio::test]
async fn members_the_snapshot_search_misses_are_read_one_by_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        &format!("base_dns = [\"{STAFF}\", \"{GROUPS}\"]"),
    );
    let mut fake = FakeDirectory::active_directory();
    fake.person(&staff_dn("Ann"), "ann@corp.example");
    // A service account without an address, inside the bases: reaches no mailbox.
    fake.add(
        &staff_dn("svc-backup"),
        vec![("objectClass", strings(&["top", "person", "user"]))],
    );
    // A contact with an address outside the bases: one mailbox.
    let contact = "cn=Partner,ou=contacts,dc=corp,dc=example";
    fake.person(contact, "partner@partner.example");
    // A group outside the bases: its members were not read, so unknown.
    let other = "cn=Elsewhere,ou=other,dc=corp,dc=example";
    fake.group(other, None, &[staff_dn("Ann")]);
    let team = format!("cn=Team,{GROUPS}");
    fake.group(
        &team,
        Some("team@corp.example"),
        &[
            staff_dn("Ann"),
            staff_dn("svc-backup"),
            contact.into(),
            other.into(),
            staff_dn("Ghost"),
        ],
    );
    let snap = snapshot(&mut fake, &config).await;
    assert_eq!(snap.stats.no_address, 1, "{:?}", snap.stats);
    assert_eq!(snap.stats.outside_lists, 1, "{:?}", snap.stats);
    assert_eq!(snap.stats.dangling, 1, "only the ghost: {:?}", snap.stats);
    assert_eq!(
        fake.searches_of(&staff_dn("Ghost")).len(),
        1,
        "each missing DN is looked up once"
    );
    let d = load(&config, Some(&snap), SystemTime::now());
    let t = d.index.list("team@corp.example").expect("team");
    assert_eq!(t.total(), 2, "ann and the partner");
    assert_eq!(t.external(), 1);
    assert_eq!(t.non_mailbox, 1, "the service account");
    assert_eq!(t.unknown, 2, "the group outside the bases and the ghost");
    assert!(
        t.unknown_reasons
            .iter()
            .any(|r| r.contains("outside base_dns")),
        "{:?}",
        t.unknown_reasons
    );
}

#[tokio::test]
async fn a_vanished_list_is_unknown_unless_another_source_defines_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let virtual_file = dir.path().join("virtual");
    std::fs::write(
        &virtual_file,
        "moved@corp.example a@corp.example, b@corp.example\n",
    )
    .expect("virtual");
    let config = config(
        dir.path(),
        &format!(
            "[[directory]]\ntype = \"postfix-virtual\"\npath = \"{}\"\n",
            virtual_file.display()
        ),
    );
    let mut fake = FakeDirectory::active_directory();
    let members = staff(&mut fake, 3);
    fake.group(
        &format!("cn=Team,{GROUPS}"),
        Some("team@corp.example"),
        &members,
    );
    let mut snap = snapshot(&mut fake, &config).await;
    let since = snap.taken_at;
    snap.vanished = ["gone@corp.example", "moved@corp.example"]
        .iter()
        .map(|a| guard::Vanished {
            address: (*a).into(),
            since,
            members: 20_000,
        })
        .collect();
    let d = load(&config, Some(&snap), SystemTime::now());
    let gone = d.audience_facts(["gone@corp.example"]).expect("configured");
    assert_eq!(
        (gone.total, gone.unknown),
        (0, 1),
        "unknown, never one mailbox"
    );
    let moved = d
        .audience_facts(["moved@corp.example"])
        .expect("configured");
    assert_eq!(
        (moved.total, moved.unknown),
        (2, 0),
        "the file that defines it now wins"
    );
    assert_eq!(total(&d, "team@corp.example"), 3);
    assert!(
        d.report
            .warnings
            .iter()
            .any(|w| w.contains("2 vanished list addresses count as unknown")),
        "{:?}",
        d.report.warnings
    );
    let policy = &config.policy;
    let v = verdict(policy, &d, "gone@corp.example");
    assert_eq!(v.action, Action::Quarantine);
    assert_eq!(rules(&v), ["expansion.on_unknown"]);
}

#[tokio::test]
async fn snapshots_are_written_0600_and_never_through_a_planted_link() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state");
    let target = dir.path().join("precious");
    std::fs::write(&target, "precious").expect("write");
    // The temporary names a snapshot writer could use: the old fixed one and the
    // state directory's.
    let name = snapshot_path(&state, "ldap");
    let name = name.file_name().and_then(|n| n.to_str()).expect("name");
    for planted in [
        format!("{name}.tmp"),
        format!(".{name}.{}", std::process::id()),
    ] {
        std::os::unix::fs::symlink(&target, state.join(planted)).expect("symlink");
    }
    let mut fake = FakeDirectory::active_directory();
    let members = staff(&mut fake, 2);
    fake.group(
        &format!("cn=Team,{GROUPS}"),
        Some("team@corp.example"),
        &members,
    );
    let snap = snapshot(&mut fake, &config).await;
    save(&state, &snap).expect("save");
    save_pending(&state, &snap).expect("save pending");
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "precious");
    for path in [snapshot_path(&state, "ldap"), pending_path(&state, "ldap")] {
        let meta = std::fs::symlink_metadata(&path).expect("saved");
        assert!(meta.is_file(), "{}", path.display());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            path.display()
        );
    }
    assert_eq!(
        load_saved(&state, settings(&config)),
        Ok(Some(snap.clone()))
    );
}

/// The fast paths of a refresh (an `entryUUID` read without allocating, a person's
/// primary address alone, a DN normalised in a reused buffer) give what the general
/// ones give.
#[test]
fn fast_paths_agree_with_the_general_ones() {
    use super::entry::{addresses, normalize_dn, primary_address};
    use super::fetch::{DnHasher, EntryKey};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        "leaf_mail_attributes = [\"mail\", \"proxyAddresses\"]",
    );
    let s = settings(&config);
    let entry = |attrs: &[(&str, &[&str])]| Entry {
        dn: "uid=x,dc=corp,dc=example".into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), strings(v)))
            .collect(),
        ..Entry::default()
    };
    for (uuid, id) in [
        ("0f6d6a8e-1b2c-4d3e-9f80-a1b2c3d4e5f6", true),
        ("0F6D6A8E-1B2C-4D3E-9F80-A1B2C3D4E5F6", true),
        ("0f6d6a8e1b2c4d3e9f80a1b2c3d4e5f6", true),
        ("0f6d6a8e-1b2c-4d3e-9f80-a1b2c3d4e5fg", false),
        ("0f6d6a8e-1b2c-4d3e-9f80a-1b2c3d4e5f6", false),
        ("not a uuid", false),
    ] {
        let e = entry(&[("entryUUID", &[uuid])]);
        let key = EntryKey::of(&e);
        assert!(key == super::entry::entry_key(&e), "{uuid}: {key:?}");
        assert_eq!(matches!(key, EntryKey::Id(_)), id, "{uuid}");
    }
    let a = EntryKey::of(&entry(&[(
        "entryUUID",
        &["0F6D6A8E-1B2C-4D3E-9F80-A1B2C3D4E5F6"],
    )]));
    let b = EntryKey::of(&entry(&[(
        "entryUUID",
        &["0f6d6a8e1b2c4d3e9f80a1b2c3d4e5f6"],
    )]));
    assert_eq!(a, b, "the same UUID however spelled");
    for attrs in [
        &[("mail", &["A@Corp.Example"][..])][..],
        &[(
            "proxyAddresses",
            &["smtp:b@corp.example", "SMTP:C@corp.example"][..],
        )],
        &[
            ("mail", &["x500:/o=corp", "plain"][..]),
            (
                "proxyAddresses",
                &["smtp:b@corp.example", "X400:c=us;a=@x"][..],
            ),
        ],
        &[("mail", &[" d@corp.example ", "e@corp.example"][..])],
        &[("mail", &["nobody"][..])],
        &[],
    ] {
        let e = entry(attrs);
        assert_eq!(
            primary_address(&e, s),
            addresses(&e, s).into_iter().next(),
            "{attrs:?}"
        );
    }
    let hasher = DnHasher::default();
    for dn in [
        "CN=A , OU=B",
        "cn=a,ou=b",
        " cn = Ünï\\, x ,ou=b",
        "cn=ünï\\, x,ou=b",
    ] {
        let other = normalize_dn(dn);
        assert_eq!(hasher.hash(dn), hasher.hash(&other), "{dn}");
    }
    assert_eq!(hasher.hash("CN=A , OU=B"), hasher.hash("cn=a,ou=b"));
    assert_ne!(hasher.hash("cn=a,ou=b"), hasher.hash("cn=b,ou=b"));
}
