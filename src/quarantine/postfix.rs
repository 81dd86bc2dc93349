// SPDX-License-Identifier: GPL-3.0-or-later
//! The Postfix adapter of the admin commands: postqueue, postsuper and postcat of the
//! instance in `[postfix] config_directory`, run without a shell, queue ids checked.

use super::record::QueueId;
use crate::config::PostfixSettings;
use crate::process::{COMMAND_TIMEOUT, RunError, run};
use serde::Deserialize;
use std::process::Command;

/// One message in Postfix's queue, from `postqueue -j`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct QueuedMessage {
    /// `hold`, `deferred`, `active`, `incoming` or `maildrop`.
    pub queue_name: String,
    /// Its queue id.
    pub queue_id: String,
    /// Arrival time, seconds since the epoch.
    #[serde(default)]
    pub arrival_time: u64,
    /// Envelope sender.
    #[serde(default)]
    pub sender: String,
    /// Envelope recipients.
    #[serde(default)]
    pub recipients: Vec<QueuedRecipient>,
}

/// One recipient in `postqueue -j` output.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct QueuedRecipient {
    /// The address.
    pub address: String,
}

/// A Postfix command that failed or said something unexpected.
#[derive(Debug, thiserror::Error)]
pub enum PostfixError {
    /// The command failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// postqueue printed a line that is not JSON.
    #[error("postqueue -j printed an unreadable line: {0}")]
    Parse(String),
    /// postsuper acted on no message.
    #[error("queue id {id} is not in Postfix's hold queue ({what})")]
    NotHeld {
        /// The id.
        id: QueueId,
        /// What postsuper said.
        what: String,
    },
}

/// Postfix's admin tools for one instance.
#[derive(Clone, Debug)]
pub struct PostfixTools {
    settings: PostfixSettings,
}

impl PostfixTools {
    /// Tools of the instance in `settings`.
    pub fn new(settings: PostfixSettings) -> PostfixTools {
        PostfixTools { settings }
    }

    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.settings.command_directory.join(name));
        cmd.arg("-c").arg(&self.settings.config_directory);
        cmd
    }

    /// Every message in the queue (all queues), via `postqueue -j`.
    pub fn queue(&self) -> Result<Vec<QueuedMessage>, PostfixError> {
        let mut cmd = self.command("postqueue");
        cmd.arg("-j");
        let out = run(cmd, None, COMMAND_TIMEOUT)?;
        parse_queue(&String::from_utf8_lossy(&out.stdout))
    }

    /// The headers of a queued message, via `postcat -hq ID`.
    pub fn headers(&self, id: &QueueId) -> Result<String, PostfixError> {
        let mut cmd = self.command("postcat");
        cmd.arg("-h").arg("-q").arg(id.as_str());
        let out = run(cmd, None, COMMAND_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The whole message as queued, header and body (`postcat -bh -q ID`), for a copy.
    pub fn content(&self, id: &QueueId) -> Result<Vec<u8>, PostfixError> {
        let mut cmd = self.command("postcat");
        cmd.arg("-bh").arg("-q").arg(id.as_str());
        Ok(run(cmd, None, COMMAND_TIMEOUT)?.stdout)
    }

    /// The values of Postfix's `main.cf` parameters `names`, in order, with `$name`
    /// references expanded (`postconf -x -h`: `non_smtpd_milters = $smtpd_milters` is
    /// common).
    pub fn postconf(&self, names: &[&str]) -> Result<Vec<String>, PostfixError> {
        let mut cmd = self.command("postconf");
        cmd.arg("-x").arg("-h").args(names);
        let out = run(cmd, None, COMMAND_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// The per-service settings of `master.cf` (`postconf -P`), one
    /// `service/type/name = value` line each.
    pub fn service_settings(&self) -> Result<String, PostfixError> {
        let mut cmd = self.command("postconf");
        cmd.arg("-P");
        let out = run(cmd, None, COMMAND_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Releases a held message (`postsuper -H`) and asks for its delivery now
    /// (`postqueue -i`); returns what postsuper said.
    pub fn release(&self, id: &QueueId) -> Result<String, PostfixError> {
        let mut cmd = self.command("postsuper");
        cmd.arg("-H").arg(id.as_str());
        let out = run(cmd, None, COMMAND_TIMEOUT)?;
        let words = expect_one(id, &out.stderr, "Released from hold")?;
        let mut cmd = self.command("postqueue");
        cmd.arg("-i").arg(id.as_str());
        if let Err(e) = run(cmd, None, COMMAND_TIMEOUT) {
            tracing::warn!(queue_id = %id, "released, but immediate delivery was not scheduled: {e}");
        }
        Ok(words)
    }

    /// Deletes a message from the hold queue only (`postsuper -d ID hold`); returns
    /// what postsuper said.
    pub fn delete_held(&self, id: &QueueId) -> Result<String, PostfixError> {
        let mut cmd = self.command("postsuper");
        cmd.arg("-d").arg(id.as_str()).arg("hold");
        let out = run(cmd, None, COMMAND_TIMEOUT)?;
        expect_one(id, &out.stderr, "Deleted")
    }
}

/// postsuper reports "postsuper: Deleted: 1 message" (or "Released from hold: 1
/// message") on stderr and says nothing when no message matched. Returns its words,
/// one line.
fn expect_one(id: &QueueId, stderr: &[u8], what: &str) -> Result<String, PostfixError> {
    let text = String::from_utf8_lossy(stderr);
    let done = text.lines().any(|l| {
        l.split_once(&format!("{what}: "))
            .and_then(|(_, n)| n.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 1)
    });
    if done {
        Ok(text.lines().map(str::trim).collect::<Vec<_>>().join("; "))
    } else {
        Err(PostfixError::NotHeld {
            id: id.clone(),
            what: if text.trim().is_empty() {
                "postsuper matched no message".to_owned()
            } else {
                text.trim().to_owned()
            },
        })
    }
}

/// Parses `postqueue -j` output: one JSON object per line.
pub fn parse_queue(text: &str) -> Result<Vec<QueuedMessage>, PostfixError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| {
                PostfixError::Parse(format!("{e}: {}", l.chars().take(200).collect::<String>()))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postqueue_json_lines_are_read() {
        let text = r#"{"queue_name": "hold", "queue_id": "1AFB698C13D", "arrival_time": 1700000000, "message_size": 412, "forced_expire": false, "sender": "ann@example.org", "recipients": [{"address": "all@example.org"}]}
{"queue_name": "deferred", "queue_id": "2BBB698C13D", "arrival_time": 1700000001, "message_size": 400, "sender": "", "recipients": [{"address": "x@example.org", "delay_reason": "connect refused"}]}
"#;
        let q = parse_queue(text).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].queue_name, "hold");
        assert_eq!(q[0].recipients[0].address, "all@example.org");
        assert_eq!(q[1].sender, "");
        assert!(parse_queue("not json\n").is_err());
        assert!(parse_queue("").unwrap().is_empty());
    }

    #[test]
    fn postsuper_counts_are_checked() {
        let id = QueueId::parse("1AFB698C13D").unwrap();
        assert_eq!(
            expect_one(
                &id,
                b"postsuper: 1AFB698C13D: removed\npostsuper: Deleted: 1 message\n",
                "Deleted"
            )
            .unwrap(),
            "postsuper: 1AFB698C13D: removed; postsuper: Deleted: 1 message"
        );
        let e = expect_one(&id, b"", "Deleted").unwrap_err();
        assert_eq!(
            e.to_string(),
            "queue id 1AFB698C13D is not in Postfix's hold queue (postsuper matched no message)"
        );
        assert!(
            expect_one(
                &id,
                b"postsuper: Released from hold: 1 message\n",
                "Released from hold"
            )
            .is_ok()
        );
    }
}
