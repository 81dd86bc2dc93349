// SPDX-License-Identifier: GPL-3.0-or-later
//! Loader tests for `[[directory]] type = "ldap"` and `[expansion] on_unknown`.

use crate::config::*;

use super::{load_after_domains as load_str, refused_after_domains as refused};
use crate::config::ldap::{FilterList, OnStale};
use std::os::unix::fs::PermissionsExt;

/// A self-signed CA certificate (P-256, valid until 2126).
pub(super) const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBmDCCAT2gAwIBAgIUbRcwCcUKYrYhn91vkRsotF8ll/swCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVZmFub3V0LW1pbHRlci10ZXN0LWNhMCAXDTI2MTEyMzE2NDYx
NloYDzIxMjYxMDMwMTY0NjE2WjAgMR4wHAYDVQQDDBVmYW5vdXQtbWlsdGVyLXRl
c3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASY6xru3tRonaY5JR8CUDtO
9tylp4ycBQzpYMTgdxX2vph5cjeGIT2gEMIKpmOqHXSy7HuPcjNRrS1/uZ+a19Cz
o1MwUTAdBgNVHQ4EFgQUWw6bd7iVX4DyT/LnzT18+F+nxSgwHwYDVR0jBBgwFoAU
Ww6bd7iVX4DyT/LnzT18+F+nxSgwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNJADBGAiEAhbUCC5F/u9/PtPWw98b4FRDmM3uao/901YPmKImyd1QCIQCY2TSd
Xh2qScp7emmiFz1cISqwMjB8aV69S6A6DNKZ3A==
-----END CERTIFICATE-----
";

/// An LDAP source with its required keys on lines 3 to 7 (after the `[domains]`
/// table); `extra` goes on inside its table from line 8.
fn ldap(extra: &str) -> String {
    format!(
        "[[directory]]\ntype = \"ldap\"\nurl = \"ldaps://dc1.corp.example\"\n\
         base_dns = [\"dc=corp,dc=example\"]\ndomains = [\"corp.example\"]\n{extra}"
    )
}

fn settings(c: &Config) -> &ldap::LdapSettings {
    c.directories[0].ldap.as_ref().expect("an LDAP source")
}

/// A file holding `text` with permissions `mode`.
fn file(dir: &Path, name: &str, text: &str, mode: u32) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.display().to_string()
}

#[test]
fn defaults_are_filled_in_and_shown() {
    let c = load_str(&ldap("")).expect("valid");
    let d = &c.directories[0];
    assert_eq!(d.kind, DirectoryKind::Ldap);
    assert_eq!(d.path, PathBuf::new());
    assert_eq!(d.domains, ["corp.example"]);
    let s = settings(&c);
    assert_eq!(s.name, "ldap");
    assert_eq!(s.url, "ldaps://dc1.corp.example");
    assert!(!s.start_tls);
    assert_eq!(
        (&s.bind_dn, &s.bind_password_file, &s.ca_file),
        (&None, &None, &None)
    );
    assert_eq!(s.base_dns, ["dc=corp,dc=example"]);
    assert_eq!(s.lookup_filter, "(|(mail=%s)(proxyAddresses=smtp:%s))");
    assert_eq!(s.leaf_mail_attributes, ["mail", "proxyAddresses"]);
    assert_eq!(s.member_dn_attributes, ["member", "uniqueMember"]);
    assert_eq!(s.member_url_attributes, ["memberURL"]);
    assert_eq!(
        s.literal_member_attributes,
        ["mgrpRFC822MailMember", "rfc822MailMember"]
    );
    assert_eq!(
        s.filter_list,
        Some(FilterList {
            filter_attribute: "msExchDynamicDLFilter".into(),
            base_attribute: "msExchDynamicDLBaseDN".into(),
        })
    );
    assert!(s.group_object_classes.iter().any(|c| c == "group"));
    assert!(s.group_object_classes.iter().any(|c| c == "groupOfNames"));
    assert_eq!(s.domains, ["corp.example"]);
    assert_eq!(s.refresh, Duration::from_secs(15 * 60));
    assert_eq!(s.timeout, Duration::from_secs(30));
    assert_eq!(s.page_size, 1000);
    assert_eq!(s.max_staleness, Duration::from_secs(24 * 3600));
    assert_eq!(s.on_stale, OnStale::UseStale);

    let printed = c.effective_toml();
    for line in [
        "type = \"ldap\"",
        "name = \"ldap\"",
        "start_tls = false",
        "lookup_filter = \"(|(mail=%s)(proxyAddresses=smtp:%s))\"",
        "refresh = \"15m\"",
        "timeout = \"30s\"",
        "page_size = 1000",
        "max_staleness = \"24h\"",
        "on_stale = \"use_stale\"",
        "max_shrink = 0.1",
        "msExchDynamicDLFilter",
    ] {
        assert!(printed.contains(line), "{line} not shown:\n{printed}");
    }
    let again = parse(&printed, Path::new("/etc/fanout-milter/fanout-milter.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.raw, c.raw);
    assert_eq!(settings(&again), s);
}

#[test]
fn settings_are_read_and_a_second_source_is_named_ldap2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password = file(dir.path(), "bind.pw", "s3cret\nignored\n", 0o600);
    let ca = file(dir.path(), "ca.pem", CA_PEM, 0o644);
    let c = load_str(&format!(
        "[[directory]]\ntype = \"ldap\"\nname = \"corp\"\nurl = \"ldap://dc1.corp.example:389\"\n\
         start_tls = true\nbind_dn = \"cn=fanout,ou=svc,dc=corp,dc=example\"\n\
         bind_password_file = \"{password}\"\nca_file = \"{ca}\"\n\
         base_dns = [\" ou=staff,dc=corp,dc=example \", \"ou=groups,dc=corp,dc=example\"]\n\
         domains = [\"Corp.Example.\"]\nleaf_mail_attributes = [\"mail\"]\n\
         filter_list = {{ filter_attribute = \"\" }}\nrefresh = \"5m\"\npage_size = 500\n\
         max_staleness = \"2h\"\non_stale = \"tempfail\"\n\
         [[directory]]\ntype = \"ldap\"\nurl = \"ldapi://%2Frun%2Fslapd%2Fldapi\"\n\
         base_dns = [\"dc=lists,dc=example\"]\ndomains = [\"lists.example\"]\non_stale = \"unknown\"\n"
    ))
    .expect("valid");
    let s = settings(&c);
    assert_eq!(s.name, "corp");
    assert!(s.start_tls);
    assert_eq!(
        s.bind_dn.as_deref(),
        Some("cn=fanout,ou=svc,dc=corp,dc=example")
    );
    assert_eq!(s.bind_password_file.as_deref(), Some(Path::new(&password)));
    assert_eq!(
        ldap::read_secret(Path::new(&password)).as_deref(),
        Ok("s3cret")
    );
    assert_eq!(s.ca_file.as_deref(), Some(Path::new(&ca)));
    assert_eq!(
        s.base_dns,
        [
            "ou=staff,dc=corp,dc=example",
            "ou=groups,dc=corp,dc=example"
        ]
    );
    assert_eq!(s.domains, ["corp.example"]);
    assert_eq!(s.leaf_mail_attributes, ["mail"]);
    assert_eq!(
        s.filter_list, None,
        "an empty filter_attribute switches it off"
    );
    assert_eq!(s.refresh, Duration::from_secs(300));
    assert_eq!(s.page_size, 500);
    assert_eq!(s.max_staleness, Duration::from_secs(7200));
    assert_eq!(s.on_stale, OnStale::Tempfail);
    let second = c.directories[1].ldap.as_ref().expect("second source");
    assert_eq!(second.name, "ldap2");
    assert_eq!(second.on_stale, OnStale::Unknown);
}

#[test]
fn required_keys_are_reported_with_their_line() {
    refused(
        "[[directory]]\ntype = \"ldap\"\nbase_dns = [\"dc=corp,dc=example\"]\n\
         domains = [\"corp.example\"]\n",
        3,
        "directory[0].url",
        "an LDAP source needs url",
    );
    refused(
        "[[directory]]\ntype = \"ldap\"\nurl = \"ldap://dc1.corp.example\"\n\
         domains = [\"corp.example\"]\n",
        3,
        "directory[0].base_dns",
        "an LDAP source needs base_dns",
    );
    refused(
        "[[directory]]\ntype = \"ldap\"\nurl = \"ldap://dc1.corp.example\"\nbase_dns = []\n\
         domains = [\"corp.example\"]\n",
        6,
        "directory[0].base_dns",
        "an LDAP source needs base_dns",
    );
    refused(
        "[[directory]]\ntype = \"ldap\"\nurl = \"ldap://dc1.corp.example\"\n\
         base_dns = [\"dc=corp,dc=example\"]\n",
        3,
        "directory[0].domains",
        "needs the mail domains",
    );
    refused(
        "[[directory]]\ntype = \"ldap\"\nurl = \"ldap://dc1.corp.example\"\n\
         base_dns = [\"dc=corp,dc=example\", \"corp.example\"]\ndomains = [\"corp.example\"]\n",
        6,
        "directory[0].base_dns[1]",
        "\"corp.example\" is not a DN",
    );
}

#[test]
fn the_url_must_be_an_ldap_url() {
    let with_url = |url: &str| {
        format!(
            "[[directory]]\ntype = \"ldap\"\nurl = \"{url}\"\n\
             base_dns = [\"dc=corp,dc=example\"]\ndomains = [\"corp.example\"]\n"
        )
    };
    refused(
        &with_url("https://dc1.corp.example"),
        5,
        "directory[0].url",
        "scheme \"https\" is not ldap://, ldaps:// or ldapi://",
    );
    refused(
        &with_url("ldaps://admin:s3cret@dc1.corp.example"),
        5,
        "directory[0].url",
        "\"ldaps://admin:***@dc1.corp.example\" carries a user or password",
    );
    refused(
        &with_url("dc1.corp.example"),
        5,
        "directory[0].url",
        "\"dc1.corp.example\" is not an LDAP URL",
    );
    refused(
        &ldap("start_tls = true\n"),
        8,
        "directory[0].start_tls",
        "StartTLS applies to ldap:// URLs only",
    );
    let c = load_str(&with_url("ldap://dc1.corp.example")).expect("plain ldap");
    assert!(!settings(&c).start_tls);
    for url in ["ldap://dc1.corp.example", "LDAP://dc1.corp.example"] {
        let c = load_str(&format!("{}start_tls = true\n", with_url(url)))
            .unwrap_or_else(|e| panic!("StartTLS on {url}: {e}"));
        assert!(settings(&c).start_tls);
    }
}

#[test]
fn bind_settings_come_together_and_the_password_file_is_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    refused(
        &ldap("bind_dn = \"cn=fanout,dc=corp,dc=example\"\n"),
        3,
        "directory[0].bind_password_file",
        "bind_dn needs bind_password_file",
    );
    let private = file(dir.path(), "private.pw", "s3cret\n", 0o600);
    refused(
        &ldap(&format!("bind_password_file = \"{private}\"\n")),
        3,
        "directory[0].bind_dn",
        "bind_password_file needs bind_dn",
    );
    let bind = |path: &str| {
        ldap(&format!(
            "bind_dn = \"cn=fanout,dc=corp,dc=example\"\nbind_password_file = \"{path}\"\n"
        ))
    };
    let shared = file(dir.path(), "shared.pw", "s3cret\n", 0o644);
    refused(
        &bind(&shared),
        9,
        "directory[0].bind_password_file",
        "is readable by every user; chmod 600",
    );
    let empty = file(dir.path(), "empty.pw", "\n", 0o600);
    refused(
        &bind(&empty),
        9,
        "directory[0].bind_password_file",
        "is empty",
    );
    let missing = dir.path().join("missing.pw").display().to_string();
    refused(
        &bind(&missing),
        9,
        "directory[0].bind_password_file",
        "cannot read",
    );

    let c = load_str(&bind(&private)).expect("a 0600 file");
    assert_eq!(
        settings(&c).bind_password_file.as_deref(),
        Some(Path::new(&private))
    );
    let group = file(dir.path(), "group.pw", "s3cret\n", 0o640);
    load_str(&bind(&group)).expect("a 0640 file");
    assert!(
        !c.effective_toml().contains("s3cret"),
        "the password is never printed"
    );
}

#[test]
fn the_ca_file_must_hold_pem_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem").display().to_string();
    refused(
        &ldap(&format!("ca_file = \"{missing}\"\n")),
        8,
        "directory[0].ca_file",
        "cannot read",
    );
    let text = file(dir.path(), "ca.txt", "not a certificate\n", 0o644);
    refused(
        &ldap(&format!("ca_file = \"{text}\"\n")),
        8,
        "directory[0].ca_file",
        "holds no PEM certificate",
    );
    let key_only = file(
        dir.path(),
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        0o644,
    );
    refused(
        &ldap(&format!("ca_file = \"{key_only}\"\n")),
        8,
        "directory[0].ca_file",
        "holds no PEM certificate",
    );
    let ca = file(dir.path(), "ca.pem", CA_PEM, 0o644);
    let c = load_str(&ldap(&format!("ca_file = \"{ca}\"\n"))).expect("a CA file");
    assert_eq!(settings(&c).ca_file.as_deref(), Some(Path::new(&ca)));
}

#[test]
fn ldap_keys_belong_to_ldap_sources_and_path_to_file_sources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let virtual_file = file(dir.path(), "virtual", "", 0o644);
    refused(
        &format!(
            "[[directory]]\ntype = \"postfix-virtual\"\npath = \"{virtual_file}\"\n\
             url = \"ldap://dc1.corp.example\"\n"
        ),
        6,
        "directory[0].url",
        "is a setting of LDAP sources (type = \"ldap\")",
    );
    refused(
        &format!(
            "[[directory]]\ntype = \"postfix-virtual\"\npath = \"{virtual_file}\"\n\
             on_stale = \"tempfail\"\n"
        ),
        6,
        "directory[0].on_stale",
        "is a setting of LDAP sources",
    );
    refused(
        &ldap(&format!("path = \"{virtual_file}\"\n")),
        8,
        "directory[0].path",
        "an LDAP source has no path",
    );
}

#[test]
fn staleness_and_refresh_settings_are_checked() {
    refused(
        &ldap("on_stale = \"accept\"\n"),
        8,
        "directory[0].on_stale",
        "\"accept\" must be \"use_stale\", \"tempfail\" or \"unknown\"",
    );
    refused(
        &ldap("refresh = \"1h\"\nmax_staleness = \"30m\"\n"),
        9,
        "directory[0].max_staleness",
        "30m is shorter than refresh (1h)",
    );
    refused(
        &ldap("max_staleness = \"10m\"\n"),
        8,
        "directory[0].max_staleness",
        "10m is shorter than refresh (15m)",
    );
    refused(
        &ldap("timeout = \"0s\"\n"),
        8,
        "directory[0].timeout",
        "must be longer than 0",
    );
    refused(
        &ldap("refresh = \"often\"\n"),
        8,
        "directory[0].refresh",
        "\"often\" is not a duration",
    );
    refused(
        &ldap("page_size = 0\n"),
        8,
        "directory[0].page_size",
        "must be at least 1",
    );
}

#[test]
fn names_attributes_and_the_lookup_filter_are_checked() {
    refused(
        &format!("{}name = \"corp\"\n{}name = \"corp\"\n", ldap(""), ldap("")),
        14,
        "directory[1].name",
        "\"corp\" names another LDAP source too",
    );
    refused(
        &ldap("name = \"corp ldap\"\n"),
        8,
        "directory[0].name",
        "must be letters, digits, - and _",
    );
    refused(
        &ldap("member_dn_attributes = [\"member\", \"member of\"]\n"),
        8,
        "directory[0].member_dn_attributes[1]",
        "\"member of\" is not an attribute name",
    );
    refused(
        &ldap("lookup_filter = \"(mail=*)\"\n"),
        8,
        "directory[0].lookup_filter",
        "has no %s",
    );
    refused(
        &ldap("lookup_filter = \"(mail=%s\"\n"),
        8,
        "directory[0].lookup_filter",
        "is not an LDAP filter",
    );
    refused(
        &ldap("leaf_mail_attributes = []\n"),
        8,
        "directory[0].leaf_mail_attributes",
        "needs at least one attribute",
    );
    refused(
        "[[directory]]\ntype = \"ldap\"\nurl = \"ldap://dc1.corp.example\"\n\
         base_dns = [\"dc=corp,dc=example\"]\ndomains = [\"corp.example\", \"*.corp.example\"]\n",
        7,
        "directory[0].domains[1]",
        "is not a domain name",
    );
}

#[test]
fn on_unknown_cannot_accept() {
    refused(
        "[expansion]\non_unknown = \"accept\"\n",
        4,
        "expansion.on_unknown",
        "\"accept\" would let a list of unknown size through unseen",
    );
    let c = load_str("[expansion]\non_unknown = \"tempfail\"\n").expect("valid");
    assert_eq!(c.policy.on_unknown, crate::policy::Action::Tempfail);
    let c = load_str("").expect("defaults");
    assert_eq!(c.policy.on_unknown, crate::policy::Action::Quarantine);
}

#[test]
fn max_shrink_is_a_share_from_0_to_1() {
    let c = load_str(&ldap("")).expect("defaults");
    assert_eq!(settings(&c).max_shrink.get(), 0.1);
    assert!(settings(&c).max_shrink.exceeded_by(11, 100));
    assert!(!settings(&c).max_shrink.exceeded_by(10, 100));
    assert!(
        !settings(&c).max_shrink.exceeded_by(5, 0),
        "nothing to lose"
    );
    let c = load_str(&ldap("max_shrink = 0.25\n")).expect("valid");
    assert_eq!(settings(&c).max_shrink.get(), 0.25);
    let c = load_str(&ldap("max_shrink = 1\n")).expect("1 takes every refresh");
    assert!(!settings(&c).max_shrink.exceeded_by(100, 100));
    for bad in ["1.5", "-0.1", "nan", "inf"] {
        refused(
            &ldap(&format!("max_shrink = {bad}\n")),
            8,
            "directory[0].max_shrink",
            "must be a share from 0 to 1",
        );
    }
    let e = load_str(
        "[[directory]]\ntype = \"postfix-virtual\"\npath = \"/nonexistent\"\nmax_shrink = 0.1\n",
    )
    .expect_err("an LDAP key on a file source");
    assert!(
        e.to_string()
            .contains(":6: directory[0].max_shrink: is a setting of LDAP sources"),
        "{e}"
    );
}

#[test]
fn ldap_durations_have_an_upper_bound() {
    refused(
        &ldap("refresh = \"8days\"\nmax_staleness = \"9d\"\n"),
        8,
        "directory[0].refresh",
        "\"8days\" is too long; use at most 7d",
    );
    refused(
        &ldap("timeout = \"1h\"\n"),
        8,
        "directory[0].timeout",
        "is too long; use at most 30m",
    );
    refused(
        &ldap("max_staleness = \"100000000y\"\n"),
        8,
        "directory[0].max_staleness",
        "is too long; use at most 365d",
    );
    let c = load_str(&ldap("refresh = \"7d\"\nmax_staleness = \"365d\"\n")).expect("at the bounds");
    assert_eq!(settings(&c).refresh, Duration::from_secs(7 * 24 * 3600));
}
