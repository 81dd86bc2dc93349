// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter directory ...`: what an address reaches (from the saved snapshots and
//! files, and live from LDAP), accepting a drifted list's size, and asking the running
//! daemon to refresh or accept an LDAP source.

use super::{Outcome, check_state_dir, complain, load_config};
use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::directory::drift::accept_current_size;
use crate::directory::index::Resolved;
use crate::directory::ldap::{Snapshots, live_lookup_as_postfix};
use crate::directory::{Directory, DriftMode, ListAudience};
use crate::policy::Policy;
use crate::policy::address::fold_case;
use crate::text;
use anyhow::anyhow;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// The directory as the daemon would load it, from the saved LDAP snapshots (each
/// one's age on standard error) and the files, without recording list sizes.
pub(super) fn load_directory(config: &Config) -> anyhow::Result<Directory> {
    let (snapshots, errors) = Snapshots::load_saved(config);
    for e in errors {
        complain(format_args!("warning: LDAP snapshot not used: {e}"));
    }
    for s in config.directories.iter().filter_map(|d| d.ldap.as_ref()) {
        match snapshots.by_source.get(&s.name) {
            Some(snap) => complain(format_args!(
                "LDAP source {}: snapshot taken {} ago ({} entries, {} lists){}",
                s.name,
                humantime::format_duration(std::time::Duration::from_secs(
                    snap.age(snapshots.now).as_secs()
                )),
                snap.stats.entries,
                snap.stats.lists,
                if snap.age(snapshots.now) > s.max_staleness {
                    ", older than max_staleness"
                } else {
                    ""
                }
            )),
            None => complain(format_args!(
                "LDAP source {}: no snapshot in {} yet (the daemon takes one)",
                s.name,
                config.state_dir.display()
            )),
        }
    }
    Ok(Directory::load(config, DriftMode::ReadOnly, &snapshots)?)
}

/// The directory for the commands that read it, after the state directory checks,
/// with its load warnings on standard error.
fn open_directory(path: &Path, config: &Config) -> anyhow::Result<Directory> {
    check_state_dir(path, config)?;
    let directory = load_directory(config)?;
    for w in &directory.report.warnings {
        complain(format_args!("warning: {w}"));
    }
    Ok(directory)
}

/// `directory lookup ADDRESS`: what the address reaches, its first `members`; with
/// `live`, also what each LDAP server says now.
pub fn lookup(path: &Path, address: &str, members: usize, live: bool) -> Outcome {
    let config = load_config(path)?;
    let directory = open_directory(path, &config)?;
    let address = config.postfix.address_form().canonical(address);
    print!(
        "{}",
        lookup_text(&directory, &config.policy, &address, members)
    );
    if live {
        return live_lookup(&config, &address);
    }
    Ok(ExitCode::SUCCESS)
}

/// `directory accept ADDRESS`: accepts a drifted list's current size.
pub fn accept(path: &Path, address: &str) -> Outcome {
    let config = load_config(path)?;
    let directory = open_directory(path, &config)?;
    let accepted = accept_current_size(&directory.index, &config.state_dir, address)?;
    let name = text::neutralize(&accepted.address);
    let size = accepted.size;
    match accepted.previous {
        Some(p) => println!("{name}: accepted size {size} (was {p})"),
        None => println!("{name}: accepted size {size}"),
    }
    println!("reload the daemon to apply it: systemctl reload fanout-milter");
    Ok(ExitCode::SUCCESS)
}

/// `directory accept --source NAME`: the running daemon takes the LDAP refresh it
/// refused.
pub fn accept_source(path: &Path, source: String) -> Outcome {
    let config = load_config(path)?;
    daemon(&config, Request::DirectoryAccept { source })
}

/// `directory refresh`: asks the daemon to refresh its LDAP sources now.
pub fn refresh(path: &Path, source: Option<String>) -> Outcome {
    let config = load_config(path)?;
    if !config.directories.iter().any(|d| d.ldap.is_some()) {
        return Err(anyhow!("the configuration has no LDAP source"));
    }
    daemon(&config, Request::DirectoryRefresh { source })
}

/// `directory lookup --live`: what each LDAP server says about an address now.
fn live_lookup(config: &Config, address: &str) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut code = ExitCode::SUCCESS;
    let folded = fold_case(address);
    for s in config.directories.iter().filter_map(|d| d.ldap.as_ref()) {
        let found = runtime.block_on(async {
            tokio::time::timeout(
                s.timeout,
                live_lookup_as_postfix(s, address, &config.postfix.recipient_delimiter),
            )
            .await
        });
        if let Ok(Ok((key, _))) = &found
            && *key != folded
        {
            println!(
                "live in LDAP source {}: no entry for {}; looked up as {} \
                 (recipient_delimiter), as Postfix does",
                s.name,
                text::neutralize(&folded),
                text::neutralize(key)
            );
        }
        match found {
            Ok(Ok((_, entries))) if entries.is_empty() => {
                println!("live in LDAP source {}: no entry", s.name);
            }
            Ok(Ok((_, entries))) => {
                for e in entries {
                    let kind = if e.list {
                        format!("list, {} direct members", e.direct_members)
                    } else {
                        "mailbox".to_owned()
                    };
                    println!(
                        "live in LDAP source {}: {} ({kind}); addresses: {}",
                        s.name,
                        text::neutralize(&e.dn),
                        text::neutralize(&e.addresses.join(", "))
                    );
                }
            }
            Ok(Err(e)) => {
                complain(format_args!("LDAP source {}: {e}", s.name));
                code = ExitCode::from(1);
            }
            Err(_) => {
                complain(format_args!(
                    "LDAP source {}: no answer within {}",
                    s.name,
                    humantime::format_duration(s.timeout)
                ));
                code = ExitCode::from(1);
            }
        }
    }
    Ok(code)
}

/// `directory refresh` and `directory accept --source`: one request to the daemon,
/// one line per source.
fn daemon(config: &Config, request: Request) -> Outcome {
    let done = match request {
        Request::DirectoryAccept { .. } => "accepted",
        _ => "refreshed",
    };
    match control::request(&config.admin_socket, &request)? {
        Response::Refreshed { outcomes } => {
            let mut failed = false;
            for o in outcomes {
                failed |= !o.ok;
                let state = match (o.ok, o.refused) {
                    (true, _) => done,
                    (false, true) => "REFUSED",
                    (false, false) => "FAILED",
                };
                println!(
                    "{}: {state}: {}",
                    text::neutralize(&o.source),
                    text::neutralize(&o.message)
                );
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Response::Error { message } => Err(anyhow!(message)),
        other => Err(anyhow!("unexpected answer: {other:?}")),
    }
}

/// `directory lookup`: what one address reaches, neutralised
/// ([`text::neutralize_lines`]): names, DNs and reasons come from the directory.
pub fn lookup_text(
    directory: &Directory,
    policy: &Policy,
    address: &str,
    max_members: usize,
) -> String {
    text::neutralize_lines(&lookup_report(directory, policy, address, max_members)).into_owned()
}

fn lookup_report(
    directory: &Directory,
    policy: &Policy,
    address: &str,
    max_members: usize,
) -> String {
    let mut out = String::new();
    let index = &directory.index;
    let Some(list) = index.list(address) else {
        let resolved = index.resolve(address);
        let _ = writeln!(
            out,
            "{address}: not a list; reaches {} address(es):",
            resolved.len()
        );
        for r in resolved {
            match r {
                Resolved::List(l) => {
                    let _ = writeln!(
                        out,
                        "  list {} ({} mailboxes, by catch-all)",
                        l.address,
                        l.total()
                    );
                }
                Resolved::Mailbox(m) => {
                    let _ = writeln!(out, "  {m}");
                }
                Resolved::Unavailable(why) => {
                    let _ = writeln!(out, "  cannot be counted now: {}", text::neutralize(&why));
                }
            }
        }
        return out;
    };
    let facts = directory.list_facts(list);
    if let Some(key) = index.list_key(address)
        && key != fold_case(address)
    {
        let _ = writeln!(
            out,
            "{}: looked up as {key} (recipient_delimiter \"{}\"), as Postfix does",
            text::neutralize(address),
            text::neutralize(index.recipient_delimiter().as_str())
        );
    }
    if let Some(canonical) = index.canonical(address) {
        let _ = writeln!(out, "{address}: another address of {canonical}");
    }
    let _ = writeln!(out, "{}: list defined at {}", list.address, list.origin);
    let _ = writeln!(
        out,
        "audience: {} mailboxes{}",
        list.total(),
        match (list.depth_exceeded, list.capped) {
            (true, _) => " (at least: nested deeper than max_depth)",
            (_, true) => " (at least: [expansion] max_audience reached)",
            _ => "",
        }
    );
    if let Some(why) = &list.unavailable {
        let _ = writeln!(
            out,
            "UNAVAILABLE: {}; mail to it is tempfailed",
            text::neutralize(why)
        );
    }
    if list.unknown > 0 {
        let _ = writeln!(
            out,
            "UNKNOWN members: {} (they count as unknown, never as one recipient):",
            list.unknown
        );
        for why in &list.unknown_reasons {
            let _ = writeln!(out, "  {}", text::neutralize(why));
        }
        if list.unknown > list.unknown_reasons.len() as u64 {
            let _ = writeln!(
                out,
                "  ... {} more",
                list.unknown - list.unknown_reasons.len() as u64
            );
        }
    }
    let _ = writeln!(out, "external: {}", list.external());
    if list.opaque > 0 {
        let _ = writeln!(out, "known only by count: {}", list.opaque);
    }
    if list.non_mailbox > 0 {
        let _ = writeln!(
            out,
            "non-mailbox targets (pipes, files): {}",
            list.non_mailbox
        );
    }
    if let Some(g) = policy.restricted.by_name(&list.address) {
        let _ = writeln!(out, "restricted to: {}", g.describe().join(", "));
    }
    if let Some(from) = facts.drift_from {
        let _ = writeln!(
            out,
            "DRIFTED: accepted size {from}, now {}; mail to it is held until accepted",
            list.total()
        );
    }
    for c in &list.cycles {
        let _ = writeln!(out, "cycle: {}", text::neutralize(c));
    }
    let _ = writeln!(out, "domains:");
    for (d, n) in list.domains.iter().take(10) {
        let _ = writeln!(out, "  {d}: {n}");
    }
    let _ = writeln!(out, "nested lists ({}):", list.nested_lists);
    tree(
        directory,
        list,
        1,
        &mut vec![list.address.clone()],
        &mut out,
    );
    let _ = writeln!(out, "first members:");
    for &m in list.mailboxes.iter().take(max_members) {
        let _ = writeln!(out, "  {}", text::neutralize(index.mailbox_name(m)));
    }
    if list.mailboxes.len() > max_members {
        let _ = writeln!(out, "  ... {} more", list.mailboxes.len() - max_members);
    }
    out
}

fn tree(
    directory: &Directory,
    list: &ListAudience,
    depth: usize,
    path: &mut Vec<Arc<str>>,
    out: &mut String,
) {
    const MAX_SHOWN: usize = 200;
    for child in directory.index.children(list) {
        if out.lines().count() > MAX_SHOWN {
            let _ = writeln!(out, "{}...", "  ".repeat(depth));
            return;
        }
        let indent = "  ".repeat(depth);
        if path.contains(&child.address) {
            let _ = writeln!(out, "{indent}{} (cycle back)", child.address);
            continue;
        }
        let _ = writeln!(
            out,
            "{indent}{} ({} mailboxes)",
            child.address,
            child.total()
        );
        path.push(child.address.clone());
        tree(directory, &child, depth + 1, path, out);
        path.pop();
    }
}
