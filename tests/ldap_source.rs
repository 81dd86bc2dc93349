// SPDX-License-Identifier: GPL-3.0-or-later
//! The LDAP directory source against a private slapd loaded with the fixture (20,000
//! people and one group of every shape), bound as an ordinary user so the server's
//! size limits apply: exact audiences, failures that keep the previous snapshot.

mod common;

use common::slapd::*;
use common::*;
use fanout_milter::cli::directory::lookup_text;
use fanout_milter::cli::explain::text;
use fanout_milter::config::{self, Config};
use fanout_milter::directory::ldap::{self, Snapshot, Snapshots};
use fanout_milter::directory::{Directory, DriftMode};
use fanout_milter::explain::{ExplainInput, explain};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const PEOPLE: usize = 20_000;

/// A configuration with one LDAP source on `url`, bound as the service account.
fn config(dir: &Path, url: &str, extra: &str) -> Config {
    config::parse(
        &ldap_config(dir, url, extra),
        &dir.join("fanout-milter.toml"),
    )
    .expect("configuration")
}

fn settings(c: &Config) -> &fanout_milter::config::ldap::LdapSettings {
    c.directories[0].ldap.as_ref().expect("an LDAP source")
}

fn refresh(c: &Config) -> Result<Snapshot, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(ldap::refresh(settings(c), Duration::from_secs(60)))
        .map_err(|e| e.to_string())
}

fn directory(c: &Config, snap: Snapshot) -> Directory {
    let mut snapshots = Snapshots::default();
    snapshots
        .by_source
        .insert(snap.source.clone(), Arc::new(snap));
    Directory::load(c, DriftMode::ReadOnly, &snapshots).expect("directory")
}

fn people(d: &Directory, list: &str) -> u64 {
    d.index
        .list(&group_mail(list))
        .unwrap_or_else(|| panic!("{list} is a list"))
        .total()
}

#[test]
fn every_shape_of_directory_list_gets_its_exact_audience() {
    require_slapd();
    let dir = scratch_dir("ldap-shapes");
    let slapd = Slapd::start(dir.path(), &fixture_ldif(PEOPLE));
    let c = config(dir.path(), &slapd.url(), "timeout = \"20s\"");
    let snap = refresh(&c).expect("refresh");
    assert!(!snap.active_directory, "slapd is not Active Directory");
    assert_eq!(snap.stats.dangling, 1, "uid=ghost: {:?}", snap.stats);
    assert_eq!(snap.stats.empty, 1, "empty-list: {:?}", snap.stats);
    assert_eq!(snap.stats.self_members, 1, "selfish: {:?}", snap.stats);
    let d = directory(&c, snap);
    let per_dept = (PEOPLE / 100) as u64;

    assert_eq!(people(&d, "all-staff"), PEOPLE as u64);
    for team in ["team-a", "team-b", "team-c"] {
        let l = d.index.list(&group_mail(team)).expect("team");
        assert_eq!(
            l.total(),
            25 + per_dept,
            "{team}: u0..u24 and dept-42, each once, cycle or not"
        );
        assert!(!l.cycles.is_empty(), "{team}: the cycle is reported");
        assert_eq!(l.unknown, 0);
    }
    assert_eq!(
        people(&d, "selfish"),
        1,
        "u99; the list itself is no mailbox"
    );
    let ext = d.index.list(&group_mail("ext-list")).expect("ext-list");
    assert_eq!(ext.total(), 3, "u30 and two literal partners");
    assert_eq!(ext.external(), 2);
    assert_eq!(
        ext.unknown, 1,
        "the dangling DN is unknown, not a recipient"
    );
    assert!(
        ext.unknown_reasons[0].contains("uid=ghost"),
        "{:?}",
        ext.unknown_reasons
    );
    assert_eq!(people(&d, "uniq"), 2, "the #'0101'B suffix is stripped");
    assert_eq!(people(&d, "dept-42"), per_dept);
    assert_eq!(
        people(&d, "dyn-dept-7"),
        per_dept,
        "the filter list's real size, not 1"
    );
    assert_eq!(people(&d, "small-10"), 10);
    let empty = d.index.list(&group_mail("empty-list")).expect("empty-list");
    assert_eq!(empty.total(), 0);
    assert_eq!(empty.unknown, 1, "an empty group is unknown, not 0 or 1");
    assert_eq!(
        people(&d, "outer-list"),
        6,
        "the mail-less group is followed"
    );
    assert_eq!(
        people(&d, "mixed-case"),
        2,
        "DNs join whatever their spelling"
    );

    // The policy: a list of unknown size gets [expansion] on_unknown (quarantine by
    // default); the filter list counts as its 200 people; a big one is held by size.
    let verdict = |rcpt: &str| {
        text(&explain(
            &c,
            &d,
            ExplainInput {
                from: format!("u00001@{MAIL_DOMAIN}"),
                rcpts: vec![rcpt.to_owned()],
                sasl_login: None,
                client: None,
                message: None,
            },
        ))
    };
    let ext = verdict(&group_mail("ext-list"));
    assert!(
        ext.contains("verdict: quarantine") && ext.contains("expansion.on_unknown"),
        "{ext}"
    );
    let dyn7 = verdict(&group_mail("dyn-dept-7"));
    assert!(dyn7.contains("verdict: accept"), "{dyn7}");
    assert!(dyn7.contains(&format!("audience: {per_dept}")), "{dyn7}");
    let all = verdict(&group_mail("all-staff"));
    assert!(
        all.contains("verdict: quarantine") && all.contains("limits.audience"),
        "{all}"
    );
    let lookup = lookup_text(&d, &c.policy, &group_mail("team-a"), 5);
    assert!(lookup.contains("cycle:"), "{lookup}");
    let lookup = lookup_text(&d, &c.policy, &group_mail("empty-list"), 5);
    assert!(lookup.contains("UNKNOWN members: 1"), "{lookup}");
}

#[test]
fn a_size_limit_fails_the_whole_refresh() {
    require_slapd();
    let dir = scratch_dir("ldap-sizelimit");
    // Paged searches stop at the hard limit too when prtotal is not set: what an
    // ordinary account meets on a default OpenLDAP.
    let slapd = Slapd::start_with(
        dir.path(),
        &fixture_ldif(1000),
        "size.soft=500 size.hard=500",
    );
    let c = config(dir.path(), &slapd.url(), "");
    let e = refresh(&c).expect_err("500 of 1,000 people is no snapshot");
    assert!(e.contains("rc=4"), "{e}");
}

#[test]
fn a_wrong_password_or_a_dead_server_fails_the_refresh_with_a_clear_error() {
    require_slapd();
    let dir = scratch_dir("ldap-bind");
    let mut slapd = Slapd::start(dir.path(), &fixture_ldif(MIN_PEOPLE));
    let c = config(dir.path(), &slapd.url(), "");
    std::fs::write(dir.path().join("ldap.secret"), "wrong\n").expect("secret");
    let e = refresh(&c).expect_err("wrong password");
    assert!(e.contains("bind as") && e.contains("rc=49"), "{e}");
    slapd.kill();
    let c = config(dir.path(), &slapd.url(), "timeout = \"2s\"");
    let e = refresh(&c).expect_err("no server");
    assert!(e.contains("connection to"), "{e}");
}

#[test]
fn a_hung_server_fails_the_refresh_within_its_timeout() {
    require_slapd();
    let dir = scratch_dir("ldap-hung");
    let slapd = Slapd::start(dir.path(), &fixture_ldif(MIN_PEOPLE));
    let c = config(dir.path(), &slapd.url(), "timeout = \"1s\"");
    slapd.signal(nix::sys::signal::Signal::SIGSTOP);
    let started = std::time::Instant::now();
    let e = refresh(&c).expect_err("slapd is stopped");
    slapd.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(e.contains("timed out"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded by the timeout, not the 60 s deadline: {:?}",
        started.elapsed()
    );
}

#[test]
fn snapshots_over_ldaps_with_a_ca_file_and_over_ldapi() {
    require_slapd();
    let dir = scratch_dir("ldap-tls");
    let slapd = Slapd::start(dir.path(), &fixture_ldif(MIN_PEOPLE));
    let ca = format!("ca_file = \"{}\"", slapd.ca_file().display());
    let c = config(dir.path(), &slapd.ldaps_url(), &ca);
    let snap = refresh(&c).expect("ldaps with the test CA");
    assert_eq!(people(&directory(&c, snap), "small-10"), 10);

    // StartTLS on the plain port, verified against the same CA.
    let c = config(dir.path(), &slapd.url(), &format!("{ca}\nstart_tls = true"));
    let snap = refresh(&c).expect("StartTLS with the test CA");
    assert_eq!(people(&directory(&c, snap), "small-10"), 10);

    // Without the CA file the system's roots do not know the test CA.
    let c = config(dir.path(), &slapd.ldaps_url(), "");
    let e = refresh(&c).expect_err("an unknown issuer");
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // ldapi:// with an anonymous bind.
    let text = format!(
        "[domains]\ninternal = [\"{MAIL_DOMAIN}\"]\n[quarantine]\nstate_dir = \"{}\"\n[[directory]]\ntype = \"ldap\"\nurl = \"{}\"\n\
         base_dns = [\"{BASE_DN}\"]\ndomains = [\"{MAIL_DOMAIN}\"]\n",
        dir.path().join("state").display(),
        slapd.ldapi_url()
    );
    let c = config::parse(&text, &dir.path().join("ldapi.toml")).expect("config");
    let snap = refresh(&c).expect("ldapi");
    assert_eq!(people(&directory(&c, snap), "team-a"), 25 + 1);
}

#[test]
fn live_lookups_escape_the_address() {
    require_slapd();
    let dir = scratch_dir("ldap-live");
    let slapd = Slapd::start(dir.path(), &fixture_ldif(MIN_PEOPLE));
    let c = config(dir.path(), &slapd.url(), "");
    let s = settings(&c);
    assert_eq!(
        ldap::lookup_filter_for(s, "a*b(c)@x.org"),
        "(|(mail=a\\2ab\\28c\\29@x.org)(proxyAddresses=smtp:a\\2ab\\28c\\29@x.org))"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let live = |address: &str| {
        rt.block_on(ldap::live_lookup(s, address))
            .unwrap_or_else(|e| panic!("{address}: {e}"))
    };
    let small = live(&group_mail("small-10"));
    assert_eq!(small.len(), 1, "{small:?}");
    assert!(small[0].list);
    assert_eq!(small[0].direct_members, 10);
    let person = live(&person_alias(1));
    assert_eq!(
        person.len(),
        1,
        "found by its smtp: proxy address: {person:?}"
    );
    assert!(!person[0].list);
    assert_eq!(
        person[0].addresses[0],
        person_mail(1),
        "mail is the primary"
    );
    // As Postfix's LDAP lookups: the address, then without its extension.
    let plus = fanout_milter::policy::address::RecipientDelimiter::new("+");
    let tagged = group_mail("small-10")
        .replace('@', "+minutes@")
        .to_uppercase();
    let (key, found) = rt
        .block_on(ldap::live_lookup_as_postfix(s, &tagged, &plus))
        .expect("live lookup");
    assert_eq!(key, group_mail("small-10").to_lowercase(), "{tagged}");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].list);
    assert_eq!(found[0].direct_members, 10);
    let (key, found) = rt
        .block_on(ldap::live_lookup_as_postfix(
            s,
            &tagged,
            &Default::default(),
        ))
        .expect("live lookup");
    assert!(
        found.is_empty() && key == tagged.to_lowercase(),
        "no delimiter: {key}"
    );
    assert!(live("*").is_empty(), "a * is a character, not a wildcard");
    assert!(live(&format!("nobody@{MAIL_DOMAIN})(mail=*")).is_empty());
}

#[test]
fn many_members_outside_the_snapshot_search_are_read_concurrently() {
    require_slapd();
    let dir = scratch_dir("ldap-outside");
    let slapd = Slapd::start(dir.path(), &fixture_ldif(MIN_PEOPLE));
    // 300 members that do not exist, the service account (no address), one person.
    let mut ldif = format!(
        "dn: {}\nchangetype: add\nobjectClass: groupOfNames\nobjectClass: mailGroup\n\
         cn: ghosts\nmail: {}\nmember: {BIND_DN}\nmember: {}\n",
        group_dn("ghosts"),
        group_mail("ghosts"),
        person_dn(5)
    );
    for i in 0..300 {
        ldif.push_str(&format!("member: uid=gone{i},{PEOPLE_DN}\n"));
    }
    let out = slapd.ldapmodify(&ldif);
    assert_eq!(out.rc, 0, "{out:?}");
    let c = config(dir.path(), &slapd.url(), "");
    let snap = refresh(&c).expect("refresh");
    assert_eq!(
        snap.stats.dangling, 301,
        "300 gone plus uid=ghost: {:?}",
        snap.stats
    );
    assert_eq!(
        snap.stats.no_address, 1,
        "the service account: {:?}",
        snap.stats
    );
    let d = directory(&c, snap);
    let l = d.index.list(&group_mail("ghosts")).expect("ghosts");
    assert_eq!((l.total(), l.unknown, l.non_mailbox), (1, 300, 1));
}

#[test]
fn a_directory_list_whose_definition_goes_wrong_is_caught_as_drift() {
    require_slapd();
    let dir = scratch_dir("ldap-drift");
    let slapd = Slapd::start(dir.path(), &fixture_ldif(1000));
    let c = config(
        dir.path(),
        &slapd.url(),
        "[drift]\nfactor = 5.0\nmin_audience = 100",
    );
    let reload = |c: &Config| {
        let mut snapshots = Snapshots::default();
        let snap = refresh(c).expect("refresh");
        snapshots
            .by_source
            .insert(snap.source.clone(), Arc::new(snap));
        // As the daemon does after each refresh: drift is judged and recorded.
        Directory::load(c, DriftMode::Record, &snapshots)
            .expect("directory")
            .record_drift()
    };
    let before = reload(&c);
    assert_eq!(people(&before, "dyn-dept-7"), 10);
    let verdict = |d: &Directory| {
        text(&explain(
            &c,
            d,
            ExplainInput {
                from: person_mail(1),
                rcpts: vec![group_mail("dyn-dept-7")],
                sasl_login: None,
                client: None,
                message: None,
            },
        ))
    };
    assert!(verdict(&before).contains("verdict: accept"));

    // The filter loses its department: the list now reaches everyone.
    let out = slapd.ldapmodify(&format!(
        "dn: {}\nchangetype: modify\nreplace: msExchDynamicDLFilter\n\
         msExchDynamicDLFilter: (&(objectClass=inetOrgPerson)(mail=*))\n",
        group_dn("dyn-dept-7")
    ));
    assert_eq!(out.rc, 0, "{out:?}");
    let after = reload(&c);
    assert_eq!(people(&after, "dyn-dept-7"), 1000);
    assert!(
        after
            .report
            .drifted
            .iter()
            .any(|(l, from, to)| l == &group_mail("dyn-dept-7") && (*from, *to) == (10, 1000)),
        "{:?}",
        after.report.drifted
    );
    let text = verdict(&after);
    assert!(
        text.contains("verdict: quarantine") && text.contains("drift"),
        "held until an admin accepts the new size: {text}"
    );
}
