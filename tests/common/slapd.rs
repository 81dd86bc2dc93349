// SPDX-License-Identifier: GPL-3.0-or-later
//! A private OpenLDAP slapd for the LDAP directory-source tests: its own slapd.conf and
//! mdb database under the test's scratch directory, loaded with `slapadd -q`, listening
//! on a free loopback port. slapd runs in the foreground (`-d none`) as a child process of
//! the test, so dropping [`Slapd`] kills it, also when the test panics.
//!
//! [`fixture_ldif`] writes the directory the tests read: people with `mail` and
//! Exchange-style `proxyAddresses`, and one mail group per shape a directory source must
//! handle (big, nested, cyclic, self-member, dangling, literal addresses, uniqueMember,
//! URL and filter lists, empty, mail-less nested group, odd DN spelling). The test-only
//! attributes come from `tests/fixtures/ldap/fanout-test.schema`.
//!
//! Bind as [`BIND_DN`] for reads, as a real deployment would: the rootdn ignores size
//! limits and so hides the 500-entry cap that only paged searches get past.

use super::{ChildGuard, DEADLINE, free_port, listening, wait_for};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// The directory's suffix.
pub const BASE_DN: &str = "dc=example,dc=org";
/// Where the people are.
pub const PEOPLE_DN: &str = "ou=people,dc=example,dc=org";
/// Where the groups are.
pub const GROUPS_DN: &str = "ou=groups,dc=example,dc=org";
/// Where the service account is.
pub const SERVICES_DN: &str = "ou=services,dc=example,dc=org";
/// The service account the milter binds as: an ordinary entry, not the rootdn, so the
/// server's limits apply to it.
pub const BIND_DN: &str = "uid=fanout,ou=services,dc=example,dc=org";
/// [`BIND_DN`]'s password.
pub const BIND_PASSWORD: &str = "fanout-test-pw";
/// The rootdn, for tests that change the directory while it runs. Never read as the
/// rootdn: it ignores the size limits.
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
/// [`ADMIN_DN`]'s password.
pub const ADMIN_PASSWORD: &str = "admin-test-pw";
/// The mail domain of people and groups.
pub const MAIL_DOMAIN: &str = "example.org";
/// The fewest people [`fixture_ldif`] accepts: the groups name people up to u00099.
pub const MIN_PEOPLE: usize = 100;
/// slapd.conf `sizelimit` used by [`Slapd::start`]: unpaged searches stop at 500
/// entries (rc 4, sizeLimitExceeded), paged ones may return everything. Without
/// `size.prtotal=unlimited`, paged searches would stop at the hard limit too.
pub const DEFAULT_LIMITS: &str = "size.soft=500 size.hard=500 size.prtotal=unlimited";

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const SLAPTEST: &str = "/usr/sbin/slaptest";
const LDAPSEARCH: &str = "/usr/bin/ldapsearch";
const LDAPMODIFY: &str = "/usr/bin/ldapmodify";
const OPENSSL: &str = "/usr/bin/openssl";

/// Fails loudly when slapd or ldap-utils is missing: the README's test command installs
/// them.
pub fn require_slapd() {
    for tool in [SLAPD, SLAPADD, SLAPTEST, LDAPSEARCH, LDAPMODIFY, OPENSSL] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run scripts/test, which installs slapd, ldap-utils and openssl (apt-get) before the tests"
        );
    }
}

/// The test-only schema (mailGroup, msExchDynamicDistributionList, exchRecipient).
pub fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ldap/fanout-test.schema")
}

/// `uid=uNNNNN,ou=people,dc=example,dc=org`.
pub fn person_dn(i: usize) -> String {
    format!("uid=u{i:05},{PEOPLE_DN}")
}

/// `uNNNNN@example.org`, a person's `mail` and `SMTP:` proxy address.
pub fn person_mail(i: usize) -> String {
    format!("u{i:05}@{MAIL_DOMAIN}")
}

/// `aliasNNNNN@example.org`, a person's secondary (`smtp:`) proxy address.
pub fn person_alias(i: usize) -> String {
    format!("alias{i:05}@{MAIL_DOMAIN}")
}

/// `cn=<cn>,ou=groups,dc=example,dc=org`.
pub fn group_dn(cn: &str) -> String {
    format!("cn={cn},{GROUPS_DN}")
}

/// `<cn>@example.org`, a group's `mail`.
pub fn group_mail(cn: &str) -> String {
    format!("{cn}@{MAIL_DOMAIN}")
}

/// The fixture directory with `n` people (`n >= MIN_PEOPLE`), as LDIF for `slapadd`.
///
/// People `uid=uNNNNN,ou=people` (i in `0..n`): inetOrgPerson + exchRecipient,
/// `mail: uNNNNN@example.org`, `proxyAddresses: SMTP:uNNNNN@example.org` and
/// `smtp:aliasNNNNN@example.org`, `departmentNumber: i % 100`.
///
/// Groups under `ou=groups`, each with `mail: <cn>@example.org` unless said otherwise,
/// and what a correct expansion gives (people by index):
///
/// | cn | shape | audience |
/// |---|---|---|
/// | all-staff | groupOfNames, `member` = every person | all n |
/// | team-a | u0..u9 + `member: cn=team-b` | team-a, -b, -c alike: u0..u24 plus dept-42 (cycle a→b→c→a) |
/// | team-b | u10..u19 + `member: cn=team-c` | as team-a |
/// | team-c | u20..u24 + `cn=team-a` + `cn=dept-42` + u0 again | as team-a |
/// | selfish | lists itself and u99 | u99 |
/// | ext-list | u30 + dangling `uid=ghost,ou=people` + `mgrpRFC822MailMember` partner1@, partner2@example.net | u30 + the two partners |
/// | uniq | groupOfUniqueNames: u40, `u41#'0101'B` | u40, u41 |
/// | dept-42 | groupOfURLs `ldap:///ou=people,…??sub?(departmentNumber=42)` | i % 100 == 42 |
/// | dyn-dept-7 | msExchDynamicDistributionList, filter `departmentNumber=7` under ou=people | i % 100 == 7 |
/// | small-10 | u50..u59 | 10 |
/// | empty-list | groupOfURLs + mailGroup with no memberURL | nobody |
/// | nested-nomail | groupOfNames u60..u64, **no mail** (not a list itself) | — |
/// | outer-list | `cn=nested-nomail` + u65 | u60..u65 |
/// | mixed-case | u70, u71 written `UID=u00070, OU=People,DC=example,DC=org`-style | u70, u71 |
///
/// And the service account [`BIND_DN`] (account + simpleSecurityObject).
pub fn fixture_ldif(n: usize) -> String {
    assert!(
        n >= MIN_PEOPLE,
        "fixture_ldif needs n >= {MIN_PEOPLE} people (its groups name u00000..u00099), got {n}"
    );
    // ~480 bytes a person, ~55 a member value.
    let mut o = String::with_capacity(n * 540 + 8192);
    let _ = write!(
        o,
        "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"
    );
    for (dn, ou) in [
        (PEOPLE_DN, "people"),
        (GROUPS_DN, "groups"),
        (SERVICES_DN, "services"),
    ] {
        let _ = write!(o, "dn: {dn}\nobjectClass: organizationalUnit\nou: {ou}\n\n");
    }
    let _ = write!(
        o,
        "dn: {BIND_DN}\nobjectClass: account\nobjectClass: simpleSecurityObject\nuid: fanout\n\
         description: fanout-milter directory reader\nuserPassword: {BIND_PASSWORD}\n\n"
    );
    for i in 0..n {
        let _ = write!(
            o,
            "dn: {dn}\nobjectClass: inetOrgPerson\nobjectClass: exchRecipient\nuid: u{i:05}\n\
             cn: User {i}\nsn: {i}\nmail: {mail}\nproxyAddresses: SMTP:{mail}\n\
             proxyAddresses: smtp:{alias}\ndepartmentNumber: {dept}\n\n",
            dn = person_dn(i),
            mail = person_mail(i),
            alias = person_alias(i),
            dept = i % 100,
        );
    }

    let people = |r: std::ops::Range<usize>| r.map(person_dn).collect::<Vec<_>>();
    // A groupOfNames + mailGroup with `member` values and extra lines.
    let mut names_group = |cn: &str, members: Vec<String>, extra: &str| {
        let _ = write!(
            o,
            "dn: {dn}\nobjectClass: groupOfNames\nobjectClass: mailGroup\ncn: {cn}\nmail: {mail}\n{extra}",
            dn = group_dn(cn),
            mail = group_mail(cn),
        );
        for m in members {
            let _ = writeln!(o, "member: {m}");
        }
        o.push('\n');
    };
    names_group("all-staff", people(0..n), "");
    // A cycle team-a -> team-b -> team-c -> team-a; team-c also nests a URL list and
    // names u0 a second time.
    names_group(
        "team-a",
        [people(0..10), vec![group_dn("team-b")]].concat(),
        "",
    );
    names_group(
        "team-b",
        [people(10..20), vec![group_dn("team-c")]].concat(),
        "",
    );
    names_group(
        "team-c",
        [
            people(20..25),
            vec![group_dn("team-a"), group_dn("dept-42"), person_dn(0)],
        ]
        .concat(),
        "",
    );
    names_group("selfish", vec![group_dn("selfish"), person_dn(99)], "");
    names_group(
        "ext-list",
        vec![person_dn(30), format!("uid=ghost,{PEOPLE_DN}")],
        "mgrpRFC822MailMember: partner1@example.net\nmgrpRFC822MailMember: partner2@example.net\n",
    );
    names_group("small-10", people(50..60), "");
    names_group(
        "outer-list",
        vec![group_dn("nested-nomail"), person_dn(65)],
        "",
    );
    // The same people as the entries' DNs, spelled differently: attribute type case,
    // value case and spaces after the commas.
    names_group(
        "mixed-case",
        vec![
            "UID=u00070, OU=People,DC=example,DC=org".to_owned(),
            "uid=U00071,  ou=PEOPLE , dc=Example,dc=ORG".to_owned(),
        ],
        "",
    );

    let _ = write!(
        o,
        "dn: {dn}\nobjectClass: groupOfUniqueNames\nobjectClass: mailGroup\ncn: uniq\nmail: {mail}\n\
         uniqueMember: {u40}\nuniqueMember: {u41}#'0101'B\n\n",
        dn = group_dn("uniq"),
        mail = group_mail("uniq"),
        u40 = person_dn(40),
        u41 = person_dn(41),
    );
    let _ = write!(
        o,
        "dn: {dn}\nobjectClass: groupOfURLs\nobjectClass: mailGroup\ncn: dept-42\nmail: {mail}\n\
         memberURL: ldap:///{PEOPLE_DN}??sub?(departmentNumber=42)\n\n",
        dn = group_dn("dept-42"),
        mail = group_mail("dept-42"),
    );
    let _ = write!(
        o,
        "dn: {dn}\nobjectClass: msExchDynamicDistributionList\ncn: dyn-dept-7\nmail: {mail}\n\
         msExchDynamicDLBaseDN: {PEOPLE_DN}\n\
         msExchDynamicDLFilter: (&(objectClass=inetOrgPerson)(mail=*)(departmentNumber=7))\n\n",
        dn = group_dn("dyn-dept-7"),
        mail = group_mail("dyn-dept-7"),
    );
    // groupOfNames needs a member: an empty list is a groupOfURLs without a URL.
    let _ = write!(
        o,
        "dn: {dn}\nobjectClass: groupOfURLs\nobjectClass: mailGroup\ncn: empty-list\nmail: {mail}\n\n",
        dn = group_dn("empty-list"),
        mail = group_mail("empty-list"),
    );
    // A security group without an address, nested in a mail list (Active Directory).
    let _ = write!(
        o,
        "dn: {dn}\nobjectClass: groupOfNames\ncn: nested-nomail\n",
        dn = group_dn("nested-nomail"),
    );
    for m in people(60..65) {
        let _ = writeln!(o, "member: {m}");
    }
    o.push('\n');
    o
}

/// A fanout-milter configuration with one LDAP source at `url`, bound as
/// [`BIND_DN`] (its password written to `dir/ldap.secret`, mode 0600), state in
/// `dir/state`, audiences of 1,000 and more held, the hidden rule off. `extra` lines go
/// into the `[[directory]]` table (and may open other tables after it).
pub fn ldap_config(dir: &Path, url: &str, extra: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let secret = dir.join("ldap.secret");
    std::fs::write(&secret, format!("{BIND_PASSWORD}\n")).expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    format!(
        r#"
[domains]
internal = ["{MAIL_DOMAIN}"]

[limits.audience]
quarantine = 1000
reject = 0

[hidden]
min_audience = 0

[[directory]]
type = "ldap"
url = "{url}"
bind_dn = "{BIND_DN}"
bind_password_file = "{secret}"
base_dns = ["{BASE_DN}"]
domains = ["{MAIL_DOMAIN}"]
{extra}

[quarantine]
state_dir = "{state}"
"#,
        secret = secret.display(),
        state = dir.join("state").display(),
    )
}

/// What an ldap-utils command printed, and its exit code: the LDAP result code (4 for
/// sizeLimitExceeded), 255 when it could not reach the server.
#[derive(Debug)]
pub struct LdapOutput {
    /// Exit code.
    pub rc: i32,
    /// LDIF (`-LLL`, unwrapped).
    pub stdout: String,
    /// Diagnostics.
    pub stderr: String,
}

impl LdapOutput {
    /// The number of entries printed.
    pub fn entries(&self) -> usize {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("dn: "))
            .count()
    }

    /// Every value of `attr` (name matched case-insensitively) over all entries, as
    /// printed (base64 `attr::` values are left out).
    pub fn values(&self, attr: &str) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                name.eq_ignore_ascii_case(attr).then(|| value.to_owned())
            })
            .collect()
    }
}

/// A private slapd on `ldap://127.0.0.1:PORT/`, killed when dropped.
pub struct Slapd {
    port: u16,
    tls_port: u16,
    dir: PathBuf,
    child: ChildGuard,
}

impl Slapd {
    /// Loads `ldif` into a new database under `root` and starts slapd with
    /// [`DEFAULT_LIMITS`]; returns once it answers a search.
    pub fn start(root: &Path, ldif: &str) -> Slapd {
        Self::start_with(root, ldif, DEFAULT_LIMITS)
    }

    /// Like [`Slapd::start`], with `limits` as the slapd.conf `sizelimit` value (for
    /// example `"size.soft=500 size.hard=500"`, which caps paged searches too).
    pub fn start_with(root: &Path, ldif: &str, limits: &str) -> Slapd {
        Self::start_streamed(root, limits, &mut |w| w.write_all(ldif.as_bytes()))
    }

    /// Like [`Slapd::start_with`], with the LDIF written by `write` straight into
    /// `slapadd`'s standard input: a fixture of millions of entries (the LDAP
    /// benchmark) is never held in memory or on disk as one text.
    pub fn start_streamed(
        root: &Path,
        limits: &str,
        write: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Slapd {
        require_slapd();
        // One directory per instance, so a test may run several under one root.
        let dir = (0..)
            .map(|i| root.join(format!("slapd{i}")))
            .find(|d| std::fs::create_dir(d).is_ok())
            .expect("a slapd directory under the test root");
        for sub in ["db", "run", "tls"] {
            std::fs::create_dir(dir.join(sub)).expect("slapd dirs");
        }
        make_tls(&dir.join("tls"));
        let conf = dir.join("slapd.conf");
        std::fs::write(&conf, slapd_conf(&dir, limits)).expect("write slapd.conf");
        run_tool(Command::new(SLAPTEST).args(["-Q", "-u", "-f"]).arg(&conf));
        // -q: no consistency checks, 40x faster; the fixture is known to be sound.
        let mut slapadd = ChildGuard(Some(
            Command::new(SLAPADD)
                .arg("-q")
                .arg("-f")
                .arg(&conf)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("start slapadd"),
        ));
        let stdin = slapadd.0.as_mut().and_then(|c| c.stdin.take());
        let mut input = std::io::BufWriter::with_capacity(1 << 20, stdin.expect("slapadd stdin"));
        let written = write(&mut input).and_then(|()| std::io::Write::flush(&mut input));
        drop(input);
        let status = slapadd.wait();
        assert!(
            written.is_ok() && status.success(),
            "slapadd failed ({status}): {written:?}"
        );
        // free_port() releases the port before slapd binds it: when another process
        // took it meanwhile, slapd exits, and we try another one.
        for _ in 0..5 {
            let mut slapd = Slapd {
                port: free_port(),
                tls_port: free_port(),
                dir: dir.clone(),
                child: ChildGuard(None),
            };
            if slapd.spawn().is_ok() {
                return slapd;
            }
        }
        panic!(
            "slapd did not start on any of 5 ports:\n{}",
            std::fs::read_to_string(dir.join("slapd.log")).unwrap_or_default()
        );
    }

    /// Starts slapd in the foreground and waits until it answers, or until it exits.
    fn spawn(&mut self) -> Result<(), ExitStatus> {
        let log = std::fs::File::create(self.dir.join("slapd.log")).expect("slapd log");
        let child = Command::new(SLAPD)
            .arg("-f")
            .arg(self.dir.join("slapd.conf"))
            .arg("-h")
            .arg(format!(
                "{} {} {}",
                self.url(),
                self.ldaps_url(),
                self.ldapi_url()
            ))
            // Any -d keeps slapd in the foreground. "none" still prints errors (such
            // as "bind(6) failed errno=98") and start/stop lines to slapd.log; "0"
            // would print nothing at all.
            .args(["-d", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start slapd");
        let pid = child.id();
        self.child = ChildGuard(Some(child));
        let port = self.port;
        let pid_file = self.dir.join("run/slapd.pid");
        wait_for(&format!("slapd to answer on port {port}"), || {
            if let Some(status) = self
                .child
                .0
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child.0 = None;
                return Some(Err(status));
            }
            // slapd writes its pidfile once it has bound the port: so the server that
            // answers is this one, not whoever may have taken the port first.
            let ours =
                std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim().parse() == Ok(pid));
            (ours && self.answers()).then_some(Ok(()))
        })
    }

    /// `ldap://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}/", self.port)
    }

    /// `ldaps://127.0.0.1:TLS_PORT/`, with a certificate for 127.0.0.1 and localhost
    /// signed by [`Slapd::ca_file`].
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}/", self.tls_port)
    }

    /// `ldapi://` on a unix socket in its run directory (path URL-encoded).
    pub fn ldapi_url(&self) -> String {
        let path = self.dir.join("run/ldapi").display().to_string();
        format!("ldapi://{}", path.replace('/', "%2F"))
    }

    /// The PEM file of the test CA that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// The port it listens on (the same after [`Slapd::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// slapd's process id; panics when it is not running.
    pub fn pid(&self) -> u32 {
        self.child.0.as_ref().expect("slapd is not running").id()
    }

    /// Its directory: slapd.conf, data.ldif, db/, slapd.log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// True when it answers an anonymous root DSE read now; false after 5 s when it
    /// hangs (SIGSTOP).
    pub fn answers(&self) -> bool {
        if !listening(self.port) {
            return false;
        }
        bounded(
            Command::new(LDAPSEARCH)
                .args(["-x", "-LLL", "-o", "nettimeout=2", "-H"])
                .arg(self.url())
                .args(["-b", "", "-s", "base", "namingContexts"]),
            None,
            Duration::from_secs(5),
        )
        .is_some_and(|out| out.rc == 0 && out.stdout.contains(BASE_DN))
    }

    /// Sends it a signal (SIGSTOP to make it hang, SIGCONT to resume it).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal slapd");
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.wait()
    }

    /// Starts it again on the same port with the same database (stopping it first when
    /// it still runs), and waits until it answers.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.stop();
        }
        self.child = ChildGuard(None);
        let _ = std::fs::remove_file(self.dir.join("run/slapd.pid"));
        if let Err(status) = self.spawn() {
            panic!(
                "slapd did not come back on port {} ({status}):\n{}",
                self.port,
                std::fs::read_to_string(self.dir.join("slapd.log")).unwrap_or_default()
            );
        }
    }

    /// `ldapsearch -x -LLL` bound as the service account, with `args` after the bind
    /// options (e.g. `["-b", BASE_DN, "(mail=*)", "mail"]`; add `"-E",
    /// "pr=100/noprompt"` to page). Fails the test when it takes longer than
    /// `DEADLINE`.
    pub fn ldapsearch(&self, args: &[&str]) -> LdapOutput {
        ldap_tool(
            Command::new(LDAPSEARCH)
                .args([
                    "-x",
                    "-LLL",
                    "-o",
                    "ldif-wrap=no",
                    "-o",
                    "nettimeout=5",
                    "-H",
                ])
                .arg(self.url())
                .args(["-D", BIND_DN, "-w", BIND_PASSWORD])
                .args(args),
            None,
            DEADLINE,
        )
    }

    /// `ldapmodify` bound as the rootdn, with `ldif` (changetype records) on stdin; for
    /// tests that change the directory while it runs.
    pub fn ldapmodify(&self, ldif: &str) -> LdapOutput {
        ldap_tool(
            Command::new(LDAPMODIFY)
                .args(["-x", "-o", "nettimeout=5", "-H"])
                .arg(self.url())
                .args(["-D", ADMIN_DN, "-w", ADMIN_PASSWORD]),
            Some(ldif),
            DEADLINE,
        )
    }
}

// ChildGuard kills it (SIGKILL) on drop: the database is thrown away with the scratch
// directory, so there is nothing to shut down cleanly.

/// slapd.conf for an instance in `dir`.
fn slapd_conf(dir: &Path, limits: &str) -> String {
    let dir = dir.display();
    let schema = schema_path();
    let schema = schema.display();
    format!(
        "# private slapd for fanout-milter tests (tests/common/slapd.rs)
include   /etc/ldap/schema/core.schema
include   /etc/ldap/schema/cosine.schema
include   /etc/ldap/schema/inetorgperson.schema
include   /etc/ldap/schema/dyngroup.schema
include   {schema}
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile  {dir}/tls/ca.pem
TLSCertificateFile    {dir}/tls/server.pem
TLSCertificateKeyFile {dir}/tls/server.key
pidfile   {dir}/run/slapd.pid
argsfile  {dir}/run/slapd.args
loglevel  none
sizelimit {limits}

database  mdb
suffix    \"{BASE_DN}\"
rootdn    \"{ADMIN_DN}\"
rootpw    {ADMIN_PASSWORD}
directory {dir}/db
maxsize   17179869184
index     objectClass eq
index     mail,uid eq
index     member,uniqueMember eq
index     departmentNumber eq
index     proxyAddresses eq

access to attrs=userPassword
    by anonymous auth
    by * none
access to *
    by * read
"
    )
}

/// A test CA and a server certificate it signs, for 127.0.0.1 and localhost, made with
/// openssl(1) in `dir`: ca.pem, server.pem, server.key.
fn make_tls(dir: &Path) {
    let openssl = |args: &[&str]| {
        run_tool(Command::new(OPENSSL).current_dir(dir).args(args));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=fanout-milter test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost
basicConstraints = CA:FALSE
         keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
",
    )
    .expect("server.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
}

/// Runs a slap* tool, failing the test with its output when it fails.
fn run_tool(cmd: &mut Command) {
    let out = ldap_tool(cmd, None, DEADLINE);
    assert!(
        out.rc == 0,
        "{cmd:?} failed ({}):\n{}{}",
        out.rc,
        out.stdout,
        out.stderr
    );
}

/// Runs `cmd` with `input` on stdin, failing the test when it takes longer than
/// `limit` (a stopped or hung slapd must not hang the test).
fn ldap_tool(cmd: &mut Command, input: Option<&str>, limit: Duration) -> LdapOutput {
    bounded(cmd, input, limit).unwrap_or_else(|| panic!("{cmd:?} did not finish within {limit:?}"))
}

/// Runs `cmd` under coreutils' timeout(1); None when `limit` ran out.
fn bounded(cmd: &mut Command, input: Option<&str>, limit: Duration) -> Option<LdapOutput> {
    use std::io::Write as _;
    let mut timeout = Command::new("timeout");
    if let Some(dir) = cmd.get_current_dir() {
        timeout.current_dir(dir);
    }
    let mut child = timeout
        .args(["-s", "KILL", &format!("{}s", limit.as_secs().max(1))])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write to stdin");
    }
    let out = child.wait_with_output().expect("wait for the command");
    // timeout(1) exits 124 when it ran out, 137 (128 + KILL) in some versions.
    let rc = out.status.code().unwrap_or(-1);
    (rc != 124 && rc != 137).then(|| LdapOutput {
        rc,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
