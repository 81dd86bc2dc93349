// SPDX-License-Identifier: GPL-3.0-or-later
//! `quarantine sweep`, run by the systemd timer: reconcile, escalate messages held past
//! `review_within`, apply `on_expiry` to those held past `expire_after`, and one alert
//! digest for all of it.

use super::index::QuarantineIndex;
use super::plan::{SweepStep, plan_sweep};
use super::record::{Record, State};
use super::review::{Outcome, Report, Review};
use super::{FOREIGN_NOTE, age};
use crate::config::OnExpiry;
use crate::link;
use crate::notify::{self, ActionLinks, Alert, AlertKind, DeskLinks, Digest, DigestOutcome};
use crate::state_dir::StateDir;
use crate::text;

impl Review<'_> {
    /// `quarantine sweep`: reconcile, then escalate overdue messages and apply
    /// `on_expiry` to expired ones; one digest for everything, which also names the
    /// foreign messages reconcile found. Foreign records are never escalated, expired,
    /// released or discarded here.
    pub fn sweep(&self) -> Report {
        let (mut report, adopted) = self.reconcile_adopting();
        let held = match self.held_records() {
            Ok(h) => h,
            Err(e) => {
                report.fail(e.to_string());
                return report;
            }
        };
        // A reviewer's request the worker has yet to carry out wins over the sweep.
        let open: Vec<i64> = match self.store.open_requests() {
            Ok(open) => open.into_iter().map(|r| r.held_id).collect(),
            Err(e) => {
                report.fail(e.to_string());
                return report;
            }
        };
        let held: Vec<Record> = held.into_iter().filter(|r| !open.contains(&r.id)).collect();
        let mut alerts: Vec<Alert> = held
            .iter()
            .filter(|r| r.foreign && adopted.contains(&r.message.queue_id))
            .map(|r| self.alert(AlertKind::Foreign, r))
            .collect();
        let foreign = held.iter().filter(|r| r.foreign).count();
        if foreign > 0 {
            report.line(format!("{foreign} {FOREIGN_NOTE}"));
        }
        for step in plan_sweep(&held, self.now, &self.config.quarantine) {
            match step {
                SweepStep::Escalate { id, queue_id } => {
                    let Some(r) = held.iter().find(|r| r.id == id) else {
                        continue;
                    };
                    let comment = format!("held {} without review", age(r.held_for(self.now)));
                    match self
                        .store
                        .mark_escalated(id, &self.entry("escalate", Some(comment)))
                    {
                        Ok(()) => {
                            report.line(format!(
                                "{queue_id}: escalated (held {})",
                                age(r.held_for(self.now))
                            ));
                            alerts.push(self.alert(AlertKind::Escalation, r));
                        }
                        Err(e) => report.fail(format!("{queue_id}: {e}")),
                    }
                }
                SweepStep::Unconfirmed { id, .. } => {
                    if let Some(r) = held.iter().find(|r| r.id == id) {
                        self.unconfirmed(r, &mut report);
                    }
                }
                SweepStep::Expire {
                    id,
                    queue_id,
                    action,
                } => {
                    let Some(r) = held.iter().find(|r| r.id == id) else {
                        continue;
                    };
                    if self.expire(r, action, &mut report) {
                        alerts.push(self.alert(AlertKind::Expired, r));
                    }
                    let _ = queue_id;
                }
            }
        }
        if !alerts.is_empty() {
            self.send_digest(alerts, &mut report);
        }
        report
    }

    fn expire(&self, r: &Record, action: OnExpiry, report: &mut Report) -> bool {
        let id = &r.message.queue_id;
        let held_for = age(r.held_for(self.now));
        let comment = match action {
            OnExpiry::Release => format!("not reviewed within {held_for}: released"),
            OnExpiry::NotifySender => format!("not reviewed within {held_for}: discarded"),
            OnExpiry::Keep => return false,
        };
        // Claimed first, as release and discard do: an admin's decision that came in
        // since the sweep read the record wins, and so does a request filed since (the
        // claim checks for an open request in the same transaction).
        let entry = self.entry("expire", Some(comment.clone()));
        if let Err(e) = self
            .store
            .set_state_unrequested(r.id, State::Held, State::Expired, &entry)
        {
            report.fail(format!("{id}: {e}"));
            return false;
        }
        let result = match action {
            OnExpiry::Release => self.released(r, State::Expired),
            _ => self.deleted(r, State::Expired),
        };
        if let Err(e) = result {
            report.fail(format!("expiry failed: {e}"));
            return false;
        }
        report.line(format!("{id}: {comment}"));
        match action {
            OnExpiry::NotifySender => self.notify_sender(r, Outcome::Expired, report),
            OnExpiry::Release if r.message.notify_sender => {
                self.notify_sender(r, Outcome::Released { words: None }, report)
            }
            _ => {}
        }
        true
    }

    /// Discards a message its sender did not confirm within `confirm_within`, claimed
    /// first as [`Self::expire`] does, and tells the sender.
    fn unconfirmed(&self, r: &Record, report: &mut Report) {
        let id = &r.message.queue_id;
        let comment = format!(
            "the sender did not confirm it within {}: discarded",
            age(self.config.quarantine.confirm_within)
        );
        let entry = self.entry("unconfirmed", Some(comment.clone()));
        if let Err(e) =
            self.store
                .set_state_unrequested(r.id, State::Held, State::Discarded, &entry)
        {
            report.fail(format!("{id}: {e}"));
            return;
        }
        if let Err(e) = self.deleted(r, State::Discarded) {
            report.fail(format!("discarding an unconfirmed message failed: {e}"));
            return;
        }
        report.line(format!("{id}: {comment}"));
        self.notify_sender(r, Outcome::Unconfirmed, report);
    }

    fn alert(&self, kind: AlertKind, r: &Record) -> Alert {
        super::alert(kind, &r.message, self.now)
    }

    /// The digest's links to the review desk: when the desk is on and `public_url` is
    /// set; with one-click links when `digest_actions` is on and the desk key (which
    /// only the daemon creates) can be read.
    fn desk_links(&self, report: &mut Report) -> Option<DeskLinks> {
        let review = &self.config.review;
        if review.listen.is_none() || review.public_url.is_empty() {
            return None;
        }
        let actions = if review.digest_actions {
            match self.desk_key() {
                Ok(key) => Some(ActionLinks {
                    key,
                    expires: self.now.saturating_add(review.link_lifetime.as_secs()),
                }),
                Err(e) => {
                    report.line(format!(
                        "one-click digest links left out: {}",
                        text::neutralize(&e)
                    ));
                    None
                }
            }
        } else {
            None
        };
        Some(DeskLinks {
            public_url: review.public_url.clone(),
            relay: self.store.relay().map(str::to_owned),
            actions,
        })
    }

    /// The desk key, read as root reads the state directory: never through a link,
    /// only a regular file with one link owned by root or the directory's owner;
    /// never created here (a key root made would not be the daemon's).
    fn desk_key(&self) -> Result<[u8; link::KEY_BYTES], String> {
        let dir = StateDir::open(&self.config.state_dir, Some(&self.config.state_owner))
            .map_err(|e| e.to_string())?;
        let bytes = dir
            .read_at_most(link::KEY_FILE, link::KEY_BYTES as u64)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "no {} yet (the daemon creates it when the desk starts)",
                    dir.join(link::KEY_FILE).display()
                )
            })?;
        link::key_from(&bytes)
            .ok_or_else(|| format!("{} is not a desk key", dir.join(link::KEY_FILE).display()))
    }

    fn send_digest(&self, alerts: Vec<Alert>, report: &mut Report) {
        let digest = Digest {
            alerts,
            dropped: 0,
            host: notify::hostname(),
            desk: self.desk_links(report),
        };
        let n = &self.config.notify;
        let sendmail =
            |to: &[String], mail: &[u8]| notify::send_mail(&self.config.postfix, "", to, mail);
        for outcome in notify::deliver_digest(n, &digest, sendmail) {
            match outcome {
                DigestOutcome::Mailed(to) => {
                    report.line(format!("alert mailed to {}", to.join(", ")))
                }
                DigestOutcome::MailFailed(e) => report.fail(format!("alert mail failed: {e}")),
                DigestOutcome::Posted => {
                    let url = n
                        .webhook
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    report.line(format!("alert posted to {url}"))
                }
                DigestOutcome::PostFailed(e) => report.fail(format!("alert webhook failed: {e}")),
                DigestOutcome::Unsent => report.line(format!(
                    "no [notify] admins or webhook; the alerts:\n{}",
                    digest.text()
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::Store;
    use crate::quarantine::postfix::PostfixTools;

    fn config(state_dir: &std::path::Path, review: &str) -> crate::config::Config {
        let mut config = crate::config::parse(
            &format!("[domains]\ninternal = [\"example.org\"]\n[review]\n{review}"),
            std::path::Path::new("/test.toml"),
        )
        .unwrap();
        config.state_dir = state_dir.to_owned();
        config
    }

    #[test]
    fn the_sweeps_digest_links_to_the_desk_and_signs_with_the_daemons_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        let on = "listen = \"inet:127.0.0.1:8025\"\npublic_url = \"https://r.example.org\"\n\
                  digest_actions = true\nlink_lifetime = \"2h\"\n";
        let links = |config: &crate::config::Config| {
            let review = Review {
                config,
                store: &store,
                postfix: PostfixTools::new(config.postfix.clone()),
                who: "sweep".into(),
                now: 1000,
            };
            let mut report = Report::default();
            (review.desk_links(&mut report), report.text)
        };
        assert_eq!(links(&config(&state, "")).0, None, "no desk");
        assert_eq!(
            links(&config(&state, "public_url = \"https://r.example.org\"\n")).0,
            None,
            "the desk is off"
        );

        let (found, report) = links(&config(&state, on));
        let found = found.expect("page links without a key");
        assert_eq!(found.public_url, "https://r.example.org");
        assert_eq!(found.actions, None);
        assert!(
            report.contains("one-click digest links left out"),
            "{report}"
        );
        assert!(
            !state.join(link::KEY_FILE).exists(),
            "the sweep never creates the daemon's key"
        );

        let key = crate::desk::key(&state).unwrap();
        let (found, report) = links(&config(&state, on));
        let actions = found.unwrap().actions.expect("signed with the key");
        assert_eq!(actions.key, key);
        assert_eq!(actions.expires, 1000 + 7200);
        assert!(report.is_empty(), "{report}");

        std::fs::remove_file(state.join(link::KEY_FILE)).unwrap();
        std::fs::write(dir.path().join("elsewhere"), [1u8; link::KEY_BYTES]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), state.join(link::KEY_FILE))
            .unwrap();
        let (found, report) = links(&config(&state, on));
        assert_eq!(found.unwrap().actions, None, "never through a link");
        assert!(report.contains("left out"), "{report}");
    }
}
