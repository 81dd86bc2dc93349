// SPDX-License-Identifier: GPL-3.0-or-later
//! LDAP entry reduction and the list join: arbitrary entries (DNs, addresses, member
//! values with `#'...'B` UIDs, ranged attributes, member URLs and filters, object
//! classes, UUIDs and GUIDs) served by an in-memory server to the same fetch the
//! refresher runs, joined into a snapshot's lists, measured and compared by the
//! refresh guard, and loaded into the directory index.

use crate::config::ldap::LdapSettings;
use crate::directory::index::{DirectoryIndex, IndexOptions};
use crate::directory::ldap::client::{Entry, LdapFault, LdapServer, Page, Scope};
use crate::directory::ldap::entry::normalize_dn;
use crate::directory::ldap::fetch::{AD_CAPABILITY, PAGED_RESULTS, fetch};
use crate::directory::ldap::guard::{Measure, Shrink, vanished};
use crate::directory::ldap::{LdapSource, Snapshot, graph};
use crate::directory::source::{DirectorySource, ListDef, Member};
use crate::policy::address::fold_case;
use arbitrary::{Result, Unstructured};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

/// The source every entry is read for: OpenLDAP and Active Directory attributes, member
/// URLs and Exchange-style filters.
const CONFIG: &str = r#"
[domains]
internal = ["corp.example"]

[[directory]]
type = "ldap"
name = "corp"
url = "ldap://dc1.corp.example"
base_dns = ["dc=corp,dc=example"]
domains = ["corp.example"]
leaf_mail_attributes = ["mail", "proxyAddresses"]
member_dn_attributes = ["member", "uniqueMember"]
member_url_attributes = ["memberURL"]
literal_member_attributes = ["rfc822MailMember"]
filter_list = { filter_attribute = "msExchDynamicDLFilter", base_attribute = "msExchDynamicDLBaseDN" }
"#;

fn settings() -> &'static LdapSettings {
    static SETTINGS: OnceLock<LdapSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let config = crate::config::parse(CONFIG, Path::new("/etc/fanout-milter/fuzz.toml"))
            .expect("the LDAP fuzz configuration");
        config.directories[0].ldap.clone().expect("an LDAP source")
    })
}

/// An in-memory server: every entry answers every search below its base, ranged
/// attributes are served in steps, base reads find entries by DN.
struct Server {
    root: Entry,
    entries: Vec<Entry>,
    /// Entries only a base read finds (outside `base_dns`).
    outside: Vec<Entry>,
    /// The whole values of ranged attributes: (normalised DN, attribute) → values.
    ranged: HashMap<(String, String), Vec<String>>,
    /// Values per range answer.
    step: usize,
    /// Answers a range with a range that goes backwards.
    backwards: bool,
    /// Searches answered, to bound a run.
    searches: usize,
}

/// Searches one run may make before the server fails them (rc 51, busy): the fetch
/// then fails as against a busy server.
const MAX_SEARCHES: usize = 2_000;

#[async_trait::async_trait]
impl LdapServer for Server {
    async fn search_page(
        &mut self,
        base: &str,
        scope: Scope,
        _filter: &str,
        attrs: &[String],
        _page: Option<(u32, Vec<u8>)>,
    ) -> std::result::Result<Page, LdapFault> {
        self.searches += 1;
        if self.searches > MAX_SEARCHES {
            return Err(LdapFault::Search {
                base: base.to_owned(),
                filter: String::new(),
                rc: 51,
                text: "busy".into(),
            });
        }
        if base.is_empty() && scope == Scope::Base {
            return Ok(page(vec![self.root.clone()]));
        }
        let dn = normalize_dn(base);
        if let Some(ranged) = attrs.iter().find(|a| a.contains(";range=")) {
            let (attr, range) = ranged.split_once(";range=").unwrap_or_default();
            let low: usize = range
                .split_once('-')
                .and_then(|(l, _)| l.parse().ok())
                .unwrap_or(0);
            let Some(all) = self.ranged.get(&(dn, attr.to_ascii_lowercase())) else {
                return Ok(page(Vec::new()));
            };
            let high = low.saturating_add(self.step).min(all.len());
            let key = if self.backwards {
                format!("{attr};range=0-0")
            } else if high >= all.len() {
                format!("{attr};range={low}-*")
            } else {
                format!("{attr};range={low}-{}", high - 1)
            };
            let values = all.get(low..high).unwrap_or_default().to_vec();
            return Ok(page(vec![Entry {
                dn: base.to_owned(),
                attrs: HashMap::from([(key, values)]),
                bin_attrs: HashMap::new(),
            }]));
        }
        let found: Vec<Entry> = match scope {
            Scope::Base => self
                .entries
                .iter()
                .chain(&self.outside)
                .filter(|e| normalize_dn(&e.dn) == dn)
                .take(1)
                .cloned()
                .collect(),
            _ => self
                .entries
                .iter()
                .filter(|e| normalize_dn(&e.dn).ends_with(&dn))
                .cloned()
                .collect(),
        };
        if found.is_empty() && scope == Scope::Base {
            return Err(LdapFault::Search {
                base: base.to_owned(),
                filter: String::new(),
                rc: 32,
                text: "noSuchObject".into(),
            });
        }
        Ok(page(found))
    }
}

fn page(entries: Vec<Entry>) -> Page {
    Page {
        entries,
        next: None,
    }
}

/// Polls a future that never waits (the in-memory server answers at once).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..1_000_000 {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("the fetch waits on an in-memory server");
}

const NAMES: [&str; 8] = ["ann", "bob", "team", "all", "Ann", "émile", "x y", "a,b"];
const CLASSES: [&str; 9] = [
    "top",
    "person",
    "user",
    "group",
    "groupOfNames",
    "groupOfUniqueNames",
    "groupOfURLs",
    "GROUP",
    "inetOrgPerson",
];

/// A DN: one of a few names below the base (spelled in different ways), or any text.
fn dn(u: &mut Unstructured<'_>) -> Result<String> {
    let name = u.choose(&NAMES)?;
    Ok(match u.int_in_range(0..=5)? {
        0 => format!("cn={name},ou=staff,dc=corp,dc=example"),
        1 => format!("CN={name}, OU=Staff,DC=corp, DC=example"),
        2 => format!("cn={name},ou=groups,dc=corp,dc=example"),
        3 => format!("cn={name},dc=elsewhere,dc=example"),
        4 => format!("cn={}\\,x,dc=corp,dc=example", u.arbitrary::<&str>()?),
        _ => u.arbitrary::<&str>()?.to_owned(),
    })
}

/// One value of an attribute, by its kind.
fn value(u: &mut Unstructured<'_>, attr: &str) -> Result<String> {
    let any = |u: &mut Unstructured<'_>| -> Result<String> { Ok(u.arbitrary::<&str>()?.into()) };
    let name = u.choose(&NAMES)?;
    Ok(match (attr, u.int_in_range(0..=3)?) {
        (_, 0) => any(u)?,
        ("mail", _) => format!("{name}@Corp.Example"),
        ("proxyAddresses", 1) => format!("SMTP:{name}@corp.example"),
        ("proxyAddresses", 2) => format!("smtp:{name}@other.example"),
        ("proxyAddresses", _) => format!("X500:/o=corp/cn={name}"),
        ("member" | "uniqueMember", 1) => format!("{}#'0101'B", dn(u)?),
        ("member" | "uniqueMember", 2) => {
            ["#'B", "x#'B", "#'", "'B"][usize::from(u.arbitrary::<u8>()? % 4)].into()
        }
        ("member" | "uniqueMember", _) => dn(u)?,
        ("memberURL", 1) => "ldap:///dc=corp,dc=example??sub?(mail=*)".into(),
        ("memberURL", 2) => format!("ldap:///ou=staff,dc=corp,dc=example??one?(cn={name})"),
        ("memberURL", _) => format!("ldap:///{}??base?(objectClass=*)", dn(u)?),
        ("msExchDynamicDLFilter", 1) => "(&(objectClass=user)(mail=*))".into(),
        ("msExchDynamicDLFilter", _) => "(((".into(),
        ("msExchDynamicDLBaseDN", _) => dn(u)?,
        ("rfc822MailMember", 1) => format!(" {name}@Corp.Example "),
        ("rfc822MailMember", _) => name.to_string(),
        ("objectClass", _) => u.choose(&CLASSES)?.to_string(),
        ("entryUUID", _) => format!("UUID-{}", u.int_in_range(0..=3)?),
        _ => any(u)?,
    })
}

const ATTRS: [&str; 10] = [
    "objectClass",
    "mail",
    "proxyAddresses",
    "member",
    "uniqueMember",
    "memberURL",
    "rfc822MailMember",
    "msExchDynamicDLFilter",
    "msExchDynamicDLBaseDN",
    "entryUUID",
];

/// An entry; ranged member values are moved to `ranged` with the first chunk kept.
fn entry(
    u: &mut Unstructured<'_>,
    ranged: &mut HashMap<(String, String), Vec<String>>,
) -> Result<Entry> {
    let mut e = Entry {
        dn: dn(u)?,
        ..Entry::default()
    };
    for _ in 0..u.int_in_range(0..=6)? {
        let attr = *u.choose(&ATTRS)?;
        let n = u.int_in_range(0..=6)?;
        let values = (0..n).map(|_| value(u, attr)).collect::<Result<Vec<_>>>()?;
        let spelled = if u.arbitrary()? {
            attr.to_owned()
        } else {
            attr.to_ascii_uppercase()
        };
        if attr.starts_with("member") && values.len() > 1 && u.arbitrary()? {
            let first = u.int_in_range(0..=values.len() - 1)?;
            let high = if first == 0 {
                "*".to_owned()
            } else {
                (first - 1).to_string()
            };
            ranged.insert(
                (normalize_dn(&e.dn), attr.to_ascii_lowercase()),
                values.clone(),
            );
            e.attrs.insert(
                format!("{spelled};range=0-{high}"),
                values[..first.max(1).min(values.len())].to_vec(),
            );
        } else {
            e.attrs.entry(spelled).or_default().extend(values);
        }
    }
    if u.arbitrary()? {
        let guid: [u8; 16] = u.arbitrary()?;
        e.bin_attrs.insert("objectGUID".into(), vec![guid.to_vec()]);
    }
    Ok(e)
}

/// Reads arbitrary entries from `data` the way a refresh does and panics when an
/// invariant breaks: a panic anywhere; a list without a name or with a name not case
/// folded; graph counts that disagree with the lists; a list reaching more mailboxes
/// than the snapshot has people and literal addresses; a refresh guard that sees a
/// snapshot lose anything against itself, or a vanished list the new snapshot still
/// has; an index whose counts are inconsistent.
pub fn ldap(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let s = settings();
    let mut ranged = HashMap::new();
    let n = u.int_in_range(0..=12)?;
    let entries = (0..n)
        .map(|_| entry(u, &mut ranged))
        .collect::<Result<Vec<_>>>()?;
    let outside = (0..u.int_in_range(0..=2)?)
        .map(|_| entry(u, &mut ranged))
        .collect::<Result<Vec<_>>>()?;
    let ad = u.arbitrary()?;
    let mut controls = Vec::new();
    if u.arbitrary()? {
        controls.push(PAGED_RESULTS.to_owned());
    }
    let mut root = Entry::default();
    root.attrs.insert("supportedControl".into(), controls);
    if ad {
        root.attrs
            .insert("supportedCapabilities".into(), vec![AD_CAPABILITY.into()]);
    }
    let literals: usize = entries
        .iter()
        .flat_map(|e| e.values("rfc822MailMember"))
        .count();
    let people = entries.len() + outside.len() + literals;
    let mut server = Server {
        root,
        entries,
        outside,
        ranged,
        step: u.int_in_range(1..=3)?,
        backwards: u.ratio(1, 16)?,
        searches: 0,
    };
    let Ok(fetched) = block_on(fetch(&mut server, s)) else {
        return Ok(());
    };
    let entries = fetched.nodes.len() as u64;
    let (searches, active_directory) = (fetched.searches, fetched.server.active_directory);
    let (lists, stats) = graph::build(fetched, s, "ldap corp");
    assert_eq!(stats.entries, entries);
    assert_eq!(stats.lists, lists.len() as u64, "{stats:?}");
    for l in &lists {
        assert!(!l.address.is_empty(), "a list without a name");
        assert_eq!(l.address, fold_case(&l.address), "a list name not folded");
        assert!(!l.members.is_empty(), "{} without a member", l.address);
    }
    let snapshot = Snapshot {
        format: 1,
        source: s.name.clone(),
        fingerprint: crate::directory::ldap::fingerprint(s),
        taken_at: 1_800_000_000,
        millis: 0,
        searches,
        active_directory,
        stats,
        lists,
        vanished: Vec::new(),
    };
    check_guard(&snapshot, s);

    let now = UNIX_EPOCH + Duration::from_secs(snapshot.taken_at + 60);
    let source = LdapSource {
        settings: s,
        snapshot: Some(Arc::new(snapshot)),
        now,
    };
    let Ok(data) = source.load() else {
        panic!("a snapshot that does not load");
    };
    let max_depth = u.int_in_range(1..=8)?;
    let index = DirectoryIndex::build_from(
        data.lists,
        &IndexOptions {
            max_depth,
            internal: crate::policy::DomainSet::new(&s.domains).expect("domains"),
            max_audience: if u.arbitrary()? { 0 } else { 3 },
            recipient_delimiter: Default::default(),
        },
    );
    for l in index.lists() {
        assert!(
            l.total() <= people as u64,
            "{} reaches {} of {people} people",
            l.address,
            l.total()
        );
    }
    let keys: Vec<String> = index.lists().map(|l| l.address.to_string()).collect();
    super::tables::check_index(&index, &keys);
    Ok(())
}

/// The refresh guard against the snapshot itself and against one without its odd
/// lists.
fn check_guard(snapshot: &Snapshot, s: &LdapSettings) {
    let m = Measure::of(&snapshot.lists, 100, 0);
    let same = Shrink::between(Some(&m), &m, 1, s.max_shrink);
    assert_eq!(same.lists_lost + same.members_lost, 0, "{same:?}");
    assert!(!same.exceeds(s.max_shrink), "{same:?}");
    assert!(vanished(snapshot, snapshot, &m).is_empty());

    let kept: Vec<ListDef> = snapshot.lists.iter().step_by(2).cloned().collect();
    let smaller = Snapshot {
        lists: kept,
        ..snapshot.clone()
    };
    let present: HashSet<&str> = smaller
        .lists
        .iter()
        .flat_map(|l| std::iter::once(&l.address).chain(&l.aliases))
        .map(String::as_str)
        .collect();
    for v in vanished(snapshot, &smaller, &m) {
        assert!(
            !present.contains(v.address.as_str()),
            "{} vanished but is there",
            v.address
        );
    }
    let after = Measure::of(&smaller.lists, 100, 0);
    let shrink = Shrink::between(Some(&m), &after, 1, s.max_shrink);
    assert!(shrink.lists_lost <= m.lists() && shrink.members_lost <= m.members());
    for l in &snapshot.lists {
        for member in &l.members {
            if let Member::Address(a) = member {
                assert!(!a.is_empty(), "an empty member of {}", l.address);
            }
        }
    }
}

/// Seeds: small directories in the shape of the unit tests' (people, a group, nested
/// and ranged groups, dynamic lists), as the bytes [`ldap`] reads.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    for n in 1..=12u8 {
        let mut seed = vec![n];
        for i in 0..n {
            // dn kind 0 (people) or 2 (groups), a few attributes of each kind.
            seed.extend_from_slice(&[i % 8, (i % 3).min(2) * 2, 3, 1 + i % 9, 2, 1, 2, 3, 4]);
            seed.extend_from_slice(&[i, 1, 2, 0, 3, 1, 1, 1]);
        }
        out.push(seed);
    }
    out.push(b"cn=ann,ou=staff,dc=corp,dc=example\0mail\0member;range=0-1499".to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    #[test]
    fn every_seed_joins() {
        let seeds = seeds();
        assert!(seeds.len() > 10);
        for seed in &seeds {
            ldap(seed);
        }
    }

    #[test]
    fn a_directory_of_groups_and_people_joins_within_its_people() {
        // Two people, a group of both, a group nesting that one and itself.
        let mut ranged = HashMap::new();
        let e = |dn: &str, attrs: &[(&str, &[&str])]| Entry {
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            bin_attrs: HashMap::new(),
        };
        let ann = "cn=ann,ou=staff,dc=corp,dc=example";
        let bob = "cn=bob,ou=staff,dc=corp,dc=example";
        let team = "cn=team,ou=groups,dc=corp,dc=example";
        let all = "cn=all,ou=groups,dc=corp,dc=example";
        ranged.insert(
            (normalize_dn(all), "member".to_owned()),
            vec![team.to_owned(), all.to_owned(), format!("{bob}#'01'B")],
        );
        let mut server = Server {
            root: Entry::default(),
            entries: vec![
                e(ann, &[("mail", &["Ann@Corp.Example"])]),
                e(bob, &[("mail", &["bob@corp.example"])]),
                e(
                    team,
                    &[("mail", &["team@corp.example"]), ("member", &[ann, bob])],
                ),
                e(
                    all,
                    &[
                        ("mail", &["all@corp.example"]),
                        ("member;range=0-0", &[team]),
                    ],
                ),
            ],
            outside: Vec::new(),
            ranged,
            step: 1,
            backwards: false,
            searches: 0,
        };
        let fetched = block_on(fetch(&mut server, settings())).expect("fetched");
        let (lists, stats) = graph::build(fetched, settings(), "ldap corp");
        assert_eq!(stats.self_members, 1, "{stats:?}");
        let index = DirectoryIndex::build(
            lists,
            &IndexOptions {
                max_depth: 10,
                internal: Default::default(),
                max_audience: 0,
                recipient_delimiter: Default::default(),
            },
        );
        assert_eq!(index.list("all@corp.example").expect("all").total(), 2);
    }

    fn config() -> Config {
        crate::fuzz::proptest_config(256, 0x1dab_5eed)
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_directory_joins(data in prop::collection::vec(any::<u8>(), 0..1024)) {
            ldap(&data);
        }
    }
}
