// SPDX-License-Identifier: GPL-3.0-or-later
//! `[[directory]] type = "ldap"`: checks the keys of an LDAP source and fills in the
//! defaults, named after Postfix's ldap_table(5) settings where there is one.

use super::{check_secret_file, duration_text};
use crate::config::ldap::{
    CaCertificates, DEFAULT_MAX_SHRINK, FilterList, LdapSettings, OnStale, Share,
};
use crate::config::raw::{RawDirectory, RawFilterList};
use crate::config::secret::redact_url;
use std::path::Path;
use std::time::Duration;

/// Upper bound of `refresh`.
const MAX_REFRESH: Duration = Duration::from_secs(7 * 24 * 3600);
/// Upper bound of `timeout` (a whole refresh may take 30 minutes).
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Upper bound of `max_staleness`.
const MAX_STALENESS: Duration = Duration::from_secs(365 * 24 * 3600);

const DEFAULT_LOOKUP_FILTER: &str = "(|(mail=%s)(proxyAddresses=smtp:%s))";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Checks one `[[directory]] type = "ldap"` (`key` is `directory[i]`), reporting each
/// problem with its key, and fills the defaults into `raw` so `check-config` shows them.
pub(super) fn validate(
    key: &str,
    index: usize,
    raw: &mut RawDirectory,
    domains: Vec<String>,
    base: &Path,
    report: &mut impl FnMut(&str, String),
) -> LdapSettings {
    let name = raw.name.clone().unwrap_or_else(|| match index {
        0 => "ldap".to_owned(),
        i => format!("ldap{}", i + 1),
    });
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        report(
            &format!("{key}.name"),
            format!("\"{name}\" must be letters, digits, - and _ (it names the snapshot file)"),
        );
    }
    if raw.path.is_some() {
        report(
            &format!("{key}.path"),
            "an LDAP source has no path: give url and base_dns".into(),
        );
    }
    let url = raw.url.clone().unwrap_or_default().trim().to_owned();
    match url::Url::parse(&url) {
        Ok(u)
            if matches!(u.scheme(), "ldap" | "ldaps" | "ldapi")
                && (!u.username().is_empty() || u.password().is_some()) =>
        {
            report(
                &format!("{key}.url"),
                format!(
                    "\"{}\" carries a user or password: give bind_dn and bind_password_file instead",
                    redact_url(&url)
                ),
            )
        }
        Ok(u) if matches!(u.scheme(), "ldap" | "ldaps" | "ldapi") => {}
        Ok(u) => report(
            &format!("{key}.url"),
            format!(
                "scheme \"{}\" is not ldap://, ldaps:// or ldapi://",
                u.scheme()
            ),
        ),
        Err(_) if url.is_empty() => report(
            &format!("{key}.url"),
            "an LDAP source needs url, e.g. \"ldaps://ldap.example.org\"".into(),
        ),
        Err(e) => report(
            &format!("{key}.url"),
            format!("\"{}\" is not an LDAP URL: {e}", redact_url(&url)),
        ),
    }
    let start_tls = raw.start_tls.unwrap_or(false);
    if start_tls
        && !url
            .get(.."ldap://".len())
            .is_some_and(|p| p.eq_ignore_ascii_case("ldap://"))
    {
        report(
            &format!("{key}.start_tls"),
            "StartTLS applies to ldap:// URLs only".into(),
        );
    }
    let bind_password_file = raw.bind_password_file.as_ref().map(|p| base.join(p));
    match (&raw.bind_dn, &bind_password_file) {
        (Some(_), None) => report(
            &format!("{key}.bind_password_file"),
            "bind_dn needs bind_password_file".into(),
        ),
        (None, Some(_)) => report(
            &format!("{key}.bind_dn"),
            "bind_password_file needs bind_dn".into(),
        ),
        (_, Some(p)) => {
            if let Err(e) = check_secret_file(p) {
                report(&format!("{key}.bind_password_file"), e);
            }
        }
        (None, None) => {}
    }
    let ca_file = raw.ca_file.as_ref().map(|p| base.join(p));
    let ca_certificates = ca_file
        .as_deref()
        .and_then(|p| match CaCertificates::read(p) {
            Ok(certs) => Some(certs),
            Err(e) => {
                report(&format!("{key}.ca_file"), e);
                None
            }
        });
    let base_dns: Vec<String> = raw
        .base_dns
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|b| b.trim().to_owned())
        .collect();
    if base_dns.is_empty() {
        report(
            &format!("{key}.base_dns"),
            "an LDAP source needs base_dns, e.g. [\"ou=people,dc=example,dc=org\"]".into(),
        );
    }
    for (i, b) in base_dns.iter().enumerate() {
        if !b.contains('=') {
            report(
                &format!("{key}.base_dns[{i}]"),
                format!("\"{b}\" is not a DN such as \"dc=example,dc=org\""),
            );
        }
    }
    let lookup_filter = raw
        .lookup_filter
        .clone()
        .unwrap_or_else(|| DEFAULT_LOOKUP_FILTER.to_owned());
    if !lookup_filter.contains("%s") {
        report(
            &format!("{key}.lookup_filter"),
            format!("\"{lookup_filter}\" has no %s for the address"),
        );
    } else if ldap3::parse_filter(lookup_filter.replace("%s", "x@example.org")).is_err() {
        report(
            &format!("{key}.lookup_filter"),
            format!("\"{lookup_filter}\" is not an LDAP filter"),
        );
    }
    let mut attrs = |field: &str, value: &Option<Vec<String>>, default: &[&str]| {
        let list = value.clone().unwrap_or_else(|| strings(default));
        for (i, a) in list.iter().enumerate() {
            if a.is_empty()
                || !a
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ';')
            {
                report(
                    &format!("{key}.{field}[{i}]"),
                    format!("\"{a}\" is not an attribute name"),
                );
            }
        }
        list
    };
    let leaf_mail_attributes = attrs(
        "leaf_mail_attributes",
        &raw.leaf_mail_attributes,
        &["mail", "proxyAddresses"],
    );
    let member_dn_attributes = attrs(
        "member_dn_attributes",
        &raw.member_dn_attributes,
        &["member", "uniqueMember"],
    );
    let member_url_attributes = attrs(
        "member_url_attributes",
        &raw.member_url_attributes,
        &["memberURL"],
    );
    let literal_member_attributes = attrs(
        "literal_member_attributes",
        &raw.literal_member_attributes,
        &["mgrpRFC822MailMember", "rfc822MailMember"],
    );
    let group_object_classes = attrs(
        "group_object_classes",
        &raw.group_object_classes,
        &[
            "groupOfNames",
            "groupOfUniqueNames",
            "groupOfURLs",
            "group",
            "msExchDynamicDistributionList",
            "mailGroup",
        ],
    );
    if leaf_mail_attributes.is_empty() {
        report(
            &format!("{key}.leaf_mail_attributes"),
            "needs at least one attribute, e.g. [\"mail\"]".into(),
        );
    }
    let raw_filter_list = raw.filter_list.clone().unwrap_or(RawFilterList {
        filter_attribute: "msExchDynamicDLFilter".into(),
        base_attribute: "msExchDynamicDLBaseDN".into(),
    });
    let filter_list = (!raw_filter_list.filter_attribute.is_empty()).then(|| FilterList {
        filter_attribute: raw_filter_list.filter_attribute.clone(),
        base_attribute: raw_filter_list.base_attribute.clone(),
    });

    let mut duration = |field: &str, value: &Option<String>, default: &str, max: Duration| {
        let text = value.clone().unwrap_or_else(|| default.to_owned());
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d > max => {
                report(
                    &format!("{key}.{field}"),
                    format!("\"{text}\" is too long; use at most {}", duration_text(max)),
                );
                (max, text)
            }
            Ok(d) if !d.is_zero() => (d, text),
            Ok(_) => {
                report(&format!("{key}.{field}"), "must be longer than 0".into());
                (Duration::from_secs(1), text)
            }
            Err(e) => {
                report(
                    &format!("{key}.{field}"),
                    format!("\"{text}\" is not a duration such as \"15m\": {e}"),
                );
                (Duration::from_secs(1), text)
            }
        }
    };
    let (refresh, refresh_text) = duration("refresh", &raw.refresh, "15m", MAX_REFRESH);
    let (timeout, timeout_text) = duration("timeout", &raw.timeout, "30s", MAX_TIMEOUT);
    let (max_staleness, staleness_text) =
        duration("max_staleness", &raw.max_staleness, "24h", MAX_STALENESS);
    if max_staleness < refresh {
        report(
            &format!("{key}.max_staleness"),
            format!("{staleness_text} is shorter than refresh ({refresh_text})"),
        );
    }
    let page_size = raw.page_size.unwrap_or(1000);
    if page_size == 0 {
        report(&format!("{key}.page_size"), "must be at least 1".into());
    }
    let on_stale_text = raw.on_stale.clone().unwrap_or_else(|| "use_stale".into());
    let on_stale = match on_stale_text.as_str() {
        "use_stale" => OnStale::UseStale,
        "tempfail" => OnStale::Tempfail,
        "unknown" => OnStale::Unknown,
        other => {
            report(
                &format!("{key}.on_stale"),
                format!("\"{other}\" must be \"use_stale\", \"tempfail\" or \"unknown\""),
            );
            OnStale::UseStale
        }
    };
    let max_shrink = raw.max_shrink.unwrap_or(DEFAULT_MAX_SHRINK);
    if !(0.0..=1.0).contains(&max_shrink) {
        report(
            &format!("{key}.max_shrink"),
            format!(
                "{max_shrink} must be a share from 0 to 1, e.g. 0.1 for a tenth of the lists \
                 or members (1 takes every refresh)"
            ),
        );
    }
    let max_shrink = Share::new(if max_shrink.is_nan() {
        DEFAULT_MAX_SHRINK
    } else {
        max_shrink.clamp(0.0, 1.0)
    });
    if domains.is_empty() {
        report(
            &format!("{key}.domains"),
            "an LDAP source needs the mail domains its lists live in, e.g. [\"example.org\"] \
             (until the first snapshot, mail to them is tempfailed)"
                .into(),
        );
    }

    raw.name = Some(name.clone());
    raw.url = Some(url.clone());
    raw.start_tls = Some(start_tls);
    raw.base_dns = Some(base_dns.clone());
    raw.lookup_filter = Some(lookup_filter.clone());
    raw.leaf_mail_attributes = Some(leaf_mail_attributes.clone());
    raw.member_dn_attributes = Some(member_dn_attributes.clone());
    raw.member_url_attributes = Some(member_url_attributes.clone());
    raw.literal_member_attributes = Some(literal_member_attributes.clone());
    raw.group_object_classes = Some(group_object_classes.clone());
    raw.filter_list = Some(raw_filter_list);
    raw.refresh = Some(refresh_text);
    raw.timeout = Some(timeout_text);
    raw.max_staleness = Some(staleness_text);
    raw.page_size = Some(page_size);
    raw.on_stale = Some(on_stale_text);
    raw.max_shrink = Some(max_shrink.get());

    LdapSettings {
        name,
        url,
        start_tls,
        bind_dn: raw.bind_dn.clone(),
        bind_password_file,
        ca_file,
        ca_certificates,
        base_dns,
        lookup_filter,
        leaf_mail_attributes,
        member_dn_attributes,
        member_url_attributes,
        literal_member_attributes,
        filter_list,
        group_object_classes,
        domains,
        refresh,
        timeout,
        page_size,
        max_staleness,
        on_stale,
        max_shrink,
    }
}
