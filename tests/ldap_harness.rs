// SPDX-License-Identifier: GPL-3.0-or-later
//! The private-slapd harness itself (tests/common/slapd.rs): the fixture loads and reads
//! back as the service account, the size limit stops unpaged searches at 500 while paged
//! ones get everything, and a killed slapd comes back on the same port with its data.
//! Needs slapd and ldap-utils (scripts/test installs them).

mod common;

use common::scratch_dir;
use common::slapd::{
    BASE_DN, BIND_DN, GROUPS_DN, PEOPLE_DN, Slapd, fixture_ldif, group_dn, group_mail, person_dn,
    person_mail,
};

const PEOPLE: &str = "(objectClass=inetOrgPerson)";

#[test]
fn fixture_reads_back_as_the_service_account() {
    let dir = scratch_dir("ldap-fixture");
    let slapd = Slapd::start(dir.path(), &fixture_ldif(200));

    let who = slapd.ldapsearch(&["-b", BIND_DN, "-s", "base", "uid"]);
    assert_eq!(who.rc, 0, "service bind: {who:?}");
    assert_eq!(who.values("uid"), ["fanout"]);

    let people = slapd.ldapsearch(&["-b", PEOPLE_DN, PEOPLE, "mail"]);
    assert_eq!(people.rc, 0, "{}", people.stderr);
    assert_eq!(people.entries(), 200);
    assert!(people.values("mail").contains(&person_mail(199)));

    let person = slapd.ldapsearch(&["-b", &person_dn(42), "-s", "base", "*"]);
    assert_eq!(
        person.values("proxyAddresses"),
        ["SMTP:u00042@example.org", "smtp:alias00042@example.org"]
    );
    assert_eq!(person.values("departmentNumber"), ["42"]);

    let all = slapd.ldapsearch(&["-b", &group_dn("all-staff"), "-s", "base", "member"]);
    assert_eq!(all.values("member").len(), 200, "all-staff lists everyone");

    // Every list shape is there, with its address.
    let lists = slapd.ldapsearch(&["-b", GROUPS_DN, "(mail=*)", "mail"]);
    let mut mails = lists.values("mail");
    mails.sort();
    let mut want: Vec<String> = [
        "all-staff",
        "team-a",
        "team-b",
        "team-c",
        "selfish",
        "ext-list",
        "uniq",
        "dept-42",
        "dyn-dept-7",
        "small-10",
        "empty-list",
        "outer-list",
        "mixed-case",
    ]
    .iter()
    .map(|cn| group_mail(cn))
    .collect();
    want.sort();
    assert_eq!(mails, want);
    let nomail = slapd.ldapsearch(&["-b", &group_dn("nested-nomail"), "-s", "base", "*"]);
    assert_eq!(nomail.values("member").len(), 5);
    assert!(nomail.values("mail").is_empty());

    let ext = slapd.ldapsearch(&["-b", &group_dn("ext-list"), "-s", "base", "*"]);
    assert_eq!(
        ext.values("mgrpRFC822MailMember"),
        ["partner1@example.net", "partner2@example.net"]
    );
    let uniq = slapd.ldapsearch(&["-b", &group_dn("uniq"), "-s", "base", "uniqueMember"]);
    assert_eq!(
        uniq.values("uniqueMember"),
        [person_dn(40), format!("{}#'0101'B", person_dn(41))]
    );

    // The URL list and the filter list select what they say.
    let url = slapd.ldapsearch(&["-b", &group_dn("dept-42"), "-s", "base", "memberURL"]);
    assert_eq!(
        url.values("memberURL"),
        [format!("ldap:///{PEOPLE_DN}??sub?(departmentNumber=42)")]
    );
    let dept42 = slapd.ldapsearch(&["-b", PEOPLE_DN, "(departmentNumber=42)", "mail"]);
    assert_eq!(dept42.values("mail"), [person_mail(42), person_mail(142)]);
    let dynl = slapd.ldapsearch(&["-b", &group_dn("dyn-dept-7"), "-s", "base", "*"]);
    let filter = &dynl.values("msExchDynamicDLFilter")[0];
    let base = &dynl.values("msExchDynamicDLBaseDN")[0];
    assert_eq!(base, PEOPLE_DN);
    let dept7 = slapd.ldapsearch(&["-b", base, filter, "mail"]);
    assert_eq!(dept7.values("mail"), [person_mail(7), person_mail(107)]);

    // slapadd stores member DNs exactly as written, and they still match the entries'
    // DNs.
    let mixed = slapd.ldapsearch(&["-b", &group_dn("mixed-case"), "-s", "base", "member"]);
    assert_eq!(
        mixed.values("member"),
        [
            "UID=u00070, OU=People,DC=example,DC=org",
            "uid=U00071,  ou=PEOPLE , dc=Example,dc=ORG"
        ]
    );
    let by_member = slapd.ldapsearch(&["-b", GROUPS_DN, &format!("(member={})", person_dn(71))]);
    assert_eq!(by_member.values("cn"), ["all-staff", "mixed-case"]);

    let base_entry = slapd.ldapsearch(&["-b", BASE_DN, "-s", "base", "dc"]);
    assert_eq!(base_entry.values("dc"), ["example"]);
    // A change over LDAP (as the rootdn) shows at once. Unlike slapadd, an LDAP modify
    // tidies a DN value: attribute types lowercased, spaces dropped, values kept.
    let added = slapd.ldapmodify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: UID=u00080,  OU=People,DC=example,DC=org\n",
        group_dn("small-10")
    ));
    assert_eq!(added.rc, 0, "{added:?}");
    let small = slapd.ldapsearch(&["-b", &group_dn("small-10"), "-s", "base", "member"]);
    let small = small.values("member");
    assert_eq!(small.len(), 11);
    assert_eq!(small[10], "uid=u00080,ou=People,dc=example,dc=org");

    // Passwords serve binds only, nobody reads them.
    let pw = slapd.ldapsearch(&["-b", BIND_DN, "-s", "base", "userPassword"]);
    assert_eq!(pw.rc, 0);
    assert!(pw.values("userPassword").is_empty(), "{pw:?}");
}

#[test]
fn unpaged_search_stops_at_500_paged_gets_everything() {
    let dir = scratch_dir("ldap-limits");
    let ldif = fixture_ldif(1000);
    let slapd = Slapd::start(dir.path(), &ldif);

    let unpaged = slapd.ldapsearch(&["-b", PEOPLE_DN, "(mail=*)", "mail"]);
    assert_eq!(unpaged.rc, 4, "sizeLimitExceeded: {}", unpaged.stderr);
    assert_eq!(unpaged.entries(), 500);

    let paged = slapd.ldapsearch(&["-E", "pr=100/noprompt", "-b", PEOPLE_DN, "(mail=*)", "mail"]);
    assert_eq!(paged.rc, 0, "{}", paged.stderr);
    assert_eq!(paged.entries(), 1000);

    let all = slapd.ldapsearch(&["-b", &group_dn("all-staff"), "-s", "base", "member"]);
    assert_eq!(all.values("member").len(), 1000);

    // Without size.prtotal=unlimited, paging does not get past the hard limit either.
    let capped = Slapd::start_with(dir.path(), &ldif, "size.soft=500 size.hard=500");
    let paged = capped.ldapsearch(&["-E", "pr=100/noprompt", "-b", PEOPLE_DN, "(mail=*)", "mail"]);
    assert_eq!(paged.rc, 4, "{}", paged.stderr);
    assert_eq!(paged.entries(), 500);
}

#[test]
fn killed_slapd_comes_back_with_its_data() {
    let dir = scratch_dir("ldap-restart");
    let mut slapd = Slapd::start(dir.path(), &fixture_ldif(200));
    let url = slapd.url();
    let pid = slapd.pid();
    assert!(slapd.is_running());

    slapd.kill();
    assert!(!slapd.is_running());
    assert!(!slapd.answers());
    let down = slapd.ldapsearch(&["-b", &person_dn(0), "-s", "base", "mail"]);
    assert_eq!(down.rc, 255, "cannot contact the server: {down:?}");

    slapd.restart();
    assert!(slapd.is_running());
    assert_eq!(slapd.url(), url, "same port");
    assert_ne!(slapd.pid(), pid);
    let back = slapd.ldapsearch(&["-b", &person_dn(199), "-s", "base", "mail"]);
    assert_eq!(back.values("mail"), [person_mail(199)]);

    // A clean stop, then back again.
    assert!(slapd.stop().success());
    slapd.restart();
    let all = slapd.ldapsearch(&["-b", &group_dn("all-staff"), "-s", "base", "member"]);
    assert_eq!(all.values("member").len(), 200);
}
