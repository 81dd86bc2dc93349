// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter review passwd|users`: the accounts of the review desk, in
//! `[review] users_file`. The daemon re-reads the file when it changes: no reload.

use super::{Outcome, load_config, usage};
use crate::desk::users::{self, MIN_PASSWORD_CHARS, Role, User};
use anyhow::{Context as _, anyhow};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

/// Where the new password comes from.
pub enum PasswordSource<'a> {
    /// Asked twice at the terminal, without echo.
    Prompt,
    /// The first line of this file.
    File(&'a Path),
    /// None: the user signs in only through the SSO proxy.
    None,
}

/// `review passwd USER --role ROLE`: adds the user or changes their role and password.
pub fn passwd(path: &Path, name: &str, role: Role, source: PasswordSource<'_>) -> Outcome {
    users::check_name(name).map_err(usage)?;
    let config = load_config(path)?;
    let file = &config.review.users_file;
    let mut table = match std::fs::symlink_metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        _ => users::read(file)?,
    };
    let hash = match source {
        PasswordSource::None => None,
        PasswordSource::File(p) => Some(hash(&password_from_file(p)?)?),
        PasswordSource::Prompt => Some(hash(&prompt()?)?),
    };
    let added = !table.contains_key(name);
    table.insert(
        name.to_owned(),
        User {
            name: name.to_owned(),
            role,
            hash,
        },
    );
    users::write(file, &table, daemon_owner(&config.state_owner))?;
    println!(
        "{} {name} ({role}) in {}",
        if added { "added" } else { "updated" },
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `review users`: every user and role, no hashes.
pub fn list(path: &Path) -> Outcome {
    let config = load_config(path)?;
    for user in users::read(&config.review.users_file)?.values() {
        let how = if user.hash.is_some() {
            "password"
        } else {
            "sso only"
        };
        println!("{:<24} {:<9} {how}", user.name, user.role);
    }
    Ok(ExitCode::SUCCESS)
}

fn hash(password: &str) -> anyhow::Result<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(usage(format!(
            "the password is too short: use at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    users::hash_password(password).map_err(|e| anyhow!("cannot hash the password: {e}"))
}

fn password_from_file(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

fn prompt() -> anyhow::Result<String> {
    let first = rpassword::prompt_password("New password: ").context("cannot read the password")?;
    let second =
        rpassword::prompt_password("Same password again: ").context("cannot read the password")?;
    if first != second {
        return Err(usage("the passwords differ"));
    }
    Ok(first)
}

/// Run as root, the file goes to the daemon's account (`[quarantine] state_owner`),
/// which must read it; otherwise it stays the caller's.
fn daemon_owner(state_owner: &str) -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    nix::unistd::User::from_name(state_owner)
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}
