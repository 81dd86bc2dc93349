// SPDX-License-Identifier: GPL-3.0-or-later
//! `[[directory]]`: the sources lists are expanded from (files here, LDAP in
//! [`super::ldap`]).

use crate::config::DirectorySpec;
use crate::config::raw::{DirectoryKind, RawDirectory};
use crate::policy::DomainSet;
use std::path::{Path, PathBuf};

/// Checks every `[[directory]]`, paths resolved against `base` (the configuration's
/// directory); fills the defaults of LDAP sources into `raw` so `check-config` shows
/// them.
pub(super) fn sources(
    raw: &mut [RawDirectory],
    base: &Path,
    report: &mut impl FnMut(&str, String),
) -> Vec<DirectorySpec> {
    let mut directories = Vec::new();
    let mut ldap_sources = 0;
    for (i, d) in raw.iter_mut().enumerate() {
        let key = format!("directory[{i}]");
        let domains = domain_names(&key, &d.domains, report);
        if d.kind == DirectoryKind::Ldap {
            let settings =
                super::ldap::validate(&key, ldap_sources, d, domains.clone(), base, report);
            ldap_sources += 1;
            if directories
                .iter()
                .any(|x: &DirectorySpec| x.ldap.as_ref().is_some_and(|l| l.name == settings.name))
            {
                report(
                    &format!("{key}.name"),
                    format!("\"{}\" names another LDAP source too", settings.name),
                );
            }
            directories.push(DirectorySpec {
                kind: d.kind,
                path: PathBuf::new(),
                domains,
                ldap: Some(settings),
            });
            continue;
        }
        let path = match &d.path {
            Some(p) => base.join(p),
            None => {
                report(
                    &format!("{key}.path"),
                    "a file source needs path, e.g. \"/etc/postfix/virtual\"".into(),
                );
                PathBuf::new()
            }
        };
        if d.path.is_some() && !path.is_file() {
            report(
                &format!("{key}.path"),
                format!("cannot read \"{}\": no such file", path.display()),
            );
        }
        if let Some(field) = d.ldap_only_key() {
            report(
                &format!("{key}.{field}"),
                "is a setting of LDAP sources (type = \"ldap\")".into(),
            );
        }
        if d.kind == DirectoryKind::Aliases && domains.is_empty() {
            report(
                &format!("{key}.domains"),
                "an aliases source needs the local domains its names apply to \
                 (Postfix's mydestination), e.g. [\"lists.example.org\"]"
                    .into(),
            );
        }
        directories.push(DirectorySpec {
            kind: d.kind,
            path,
            domains,
            ldap: None,
        });
    }
    directories
}

/// Lower-cased domain names (no wildcards) of a directory source.
fn domain_names(
    key: &str,
    domains: &[String],
    report: &mut impl FnMut(&str, String),
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, d) in domains.iter().enumerate() {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if d.contains('*') || DomainSet::new([&d]).is_err() {
            report(
                &format!("{key}.domains[{i}]"),
                format!("\"{d}\" is not a domain name"),
            );
        } else {
            out.push(d);
        }
    }
    out
}
