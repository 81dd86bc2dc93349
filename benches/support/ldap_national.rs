// SPDX-License-Identifier: GPL-3.0-or-later
//! The national-scale LDAP fixture of the LDAP benchmark, written as LDIF straight into
//! `slapadd` (tests/common/slapd.rs `Slapd::start_streamed`). With `people` = 1,500,000:
//!
//! * 1,500,000 people `uid=uNNNNN,ou=people` (as the test fixture: `mail`,
//!   `proxyAddresses` SMTP:/smtp:, `departmentNumber` = i % 1000);
//! * 100,000 lists (`people / 15`) under `ou=groups`, each with a `mail`:
//!   * `all-staff`: a groupOfNames of the first 56% of the people (840,000);
//!   * teams `team-NNNNNN`: groupOfNames of about 15 consecutive people each, every
//!     tenth one also nesting the next team;
//!   * divisions `div-NNNN` (1 in 100 lists): each nests about 95 teams and the ten
//!     divisions below it (a tree of divisions: nested groups three deep at 1,000);
//!   * dynamic lists `dyn-NNNN` (1 in 1,000 lists): groupOfURLs whose `memberURL`
//!     selects a department (about 1,500 people each);
//! * the service account the milter binds as.

use super::slapd::{BASE_DN, BIND_DN, BIND_PASSWORD, GROUPS_DN, PEOPLE_DN, SERVICES_DN};
use std::io::{Result, Write};

/// How many lists of each kind a fixture of `people` has.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// People.
    pub people: usize,
    /// Members of all-staff.
    pub all_staff: usize,
    /// Teams.
    pub teams: usize,
    /// Divisions.
    pub divisions: usize,
    /// Dynamic lists.
    pub dynamic: usize,
}

impl Shape {
    /// The shape for `people` (at least 1,000).
    pub fn of(people: usize) -> Shape {
        assert!(people >= 1000, "the national fixture needs >= 1,000 people");
        let lists = people / 15;
        let dynamic = (lists / 1000).max(1);
        let divisions = (lists / 100).max(1);
        Shape {
            people,
            all_staff: people * 56 / 100,
            teams: lists - 1 - dynamic - divisions,
            divisions,
            dynamic,
        }
    }

    /// Lists in all.
    pub fn lists(&self) -> usize {
        1 + self.teams + self.divisions + self.dynamic
    }

    /// People of department `d`.
    pub fn department(&self, d: usize) -> usize {
        (0..self.people).filter(|i| i % 1000 == d).count()
    }
}

fn team_cn(t: usize) -> String {
    format!("team-{t:06}")
}

fn div_cn(d: usize) -> String {
    format!("div-{d:04}")
}

fn person(i: usize) -> String {
    format!("uid=u{i:05},{PEOPLE_DN}")
}

fn group(o: &mut dyn Write, cn: &str, classes: &str) -> Result<()> {
    write!(
        o,
        "dn: cn={cn},{GROUPS_DN}\n{classes}cn: {cn}\nmail: {cn}@example.org\n"
    )
}

/// Writes the fixture of `shape` as LDIF to `o`.
pub fn write(shape: Shape, o: &mut dyn Write) -> Result<()> {
    write!(
        o,
        "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"
    )?;
    for (dn, ou) in [
        (PEOPLE_DN, "people"),
        (GROUPS_DN, "groups"),
        (SERVICES_DN, "services"),
    ] {
        write!(o, "dn: {dn}\nobjectClass: organizationalUnit\nou: {ou}\n\n")?;
    }
    write!(
        o,
        "dn: {BIND_DN}\nobjectClass: account\nobjectClass: simpleSecurityObject\nuid: fanout\n\
         userPassword: {BIND_PASSWORD}\n\n"
    )?;
    for i in 0..shape.people {
        write!(
            o,
            "dn: {dn}\nobjectClass: inetOrgPerson\nobjectClass: exchRecipient\nuid: u{i:05}\n\
             cn: User {i}\nsn: {i}\nmail: u{i:05}@example.org\nproxyAddresses: SMTP:u{i:05}@example.org\n\
             proxyAddresses: smtp:alias{i:05}@example.org\ndepartmentNumber: {dept}\n\n",
            dn = person(i),
            dept = i % 1000,
        )?;
    }
    let names = "objectClass: groupOfNames\nobjectClass: mailGroup\n";
    group(o, "all-staff", names)?;
    for i in 0..shape.all_staff {
        writeln!(o, "member: {}", person(i))?;
    }
    writeln!(o)?;
    for t in 0..shape.teams {
        group(o, &team_cn(t), names)?;
        for i in t * shape.people / shape.teams..(t + 1) * shape.people / shape.teams {
            writeln!(o, "member: {}", person(i))?;
        }
        if t % 10 == 0 && t + 1 < shape.teams {
            writeln!(o, "member: cn={},{GROUPS_DN}", team_cn(t + 1))?;
        }
        writeln!(o)?;
    }
    for d in 0..shape.divisions {
        group(o, &div_cn(d), names)?;
        for t in d * shape.teams / shape.divisions..(d + 1) * shape.teams / shape.divisions {
            writeln!(o, "member: cn={},{GROUPS_DN}", team_cn(t))?;
        }
        for sub in 10 * d + 1..=10 * d + 10 {
            if sub < shape.divisions {
                writeln!(o, "member: cn={},{GROUPS_DN}", div_cn(sub))?;
            }
        }
        writeln!(o)?;
    }
    let urls = "objectClass: groupOfURLs\nobjectClass: mailGroup\n";
    for k in 0..shape.dynamic {
        group(o, &format!("dyn-{k:04}"), urls)?;
        writeln!(
            o,
            "memberURL: ldap:///{PEOPLE_DN}??sub?(departmentNumber={})\n",
            k % 1000
        )?;
    }
    Ok(())
}
