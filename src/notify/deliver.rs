// SPDX-License-Identifier: GPL-3.0-or-later
//! Delivering alerts and notices: Postfix's `sendmail` (admin commands, run on the
//! relay), SMTP to `[notify] relay` (the unprivileged daemon) and webhooks. All
//! blocking, all bounded by deadlines; never called on the mail path.

use super::Digest;
use crate::config::secret::{SecretUrl, redact_url_in};
use crate::config::{NotifySettings, PostfixSettings};
use crate::process::{self, COMMAND_TIMEOUT, RunError};
use lettre::Transport;
use lettre::address::Envelope;
use lettre::transport::smtp::SmtpTransport;
use lettre::transport::smtp::extension::ClientId;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// Webhook attempts per post.
pub const WEBHOOK_ATTEMPTS: u32 = 3;
/// Pause before the second attempt; doubled before each further one.
pub const WEBHOOK_BACKOFF: Duration = Duration::from_secs(1);

/// A notice or alert that could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// `sendmail` failed.
    #[error(transparent)]
    Sendmail(#[from] RunError),
    /// An address was refused before sending.
    #[error("bad recipient address \"{0}\"")]
    Address(String),
    /// The SMTP relay refused the mail for good (a 5xx reply): trying again would not
    /// help.
    #[error("SMTP relay {relay} refused it: {message}")]
    Refused {
        /// host:port.
        relay: String,
        /// What it said.
        message: String,
    },
    /// The SMTP relay refused for now or could not be reached.
    #[error("SMTP relay {relay}: {message}")]
    Smtp {
        /// host:port.
        relay: String,
        /// What went wrong.
        message: String,
    },
    /// Every webhook attempt failed; the last error.
    #[error("webhook {url}: {message} (after {attempts} attempts)")]
    Webhook {
        /// The URL, redacted.
        url: String,
        /// The last failure.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// How one digest went out, channel by channel, in the order tried.
#[derive(Debug, PartialEq, Eq)]
pub enum DigestOutcome {
    /// Mailed to these of `[notify] admins` (all of them in one mail, or one each when
    /// the digest carries one-click links).
    Mailed(Vec<String>),
    /// The mail could not be composed or sent.
    MailFailed(String),
    /// Posted to `[notify] webhook`.
    Posted,
    /// The webhook post failed.
    PostFailed(String),
    /// No admins and no webhook are configured: nobody was told.
    Unsent,
}

/// Sends `digest` by mail to `[notify] admins` through `mail` (recipients, message;
/// one mail per admin when it carries one-click links)
/// and to `[notify] webhook`: the one digest delivery of the daemon's alert queue and
/// of the sweep, which differ only in how mail leaves (SMTP to the relay from the
/// unprivileged daemon, Postfix's sendmail from the root sweep). Blocking.
pub fn deliver_digest(
    n: &NotifySettings,
    digest: &Digest,
    mail: impl Fn(&[String], &[u8]) -> Result<(), DeliverError>,
) -> Vec<DigestOutcome> {
    let mut outcomes = Vec::new();
    if !n.admins.is_empty() {
        for (to, message) in digest.mails(&n.from, &n.admins) {
            let sent = message
                .map_err(|e| e.to_string())
                .and_then(|message| mail(&to, &message).map_err(|e| e.to_string()));
            outcomes.push(match sent {
                Ok(()) => DigestOutcome::Mailed(to),
                Err(e) if digest.per_admin() => {
                    DigestOutcome::MailFailed(format!("to {}: {e}", to.join(", ")))
                }
                Err(e) => DigestOutcome::MailFailed(e),
            });
        }
    }
    if let Some(url) = &n.webhook {
        outcomes.push(match post_webhook(url, n.webhook_timeout, &digest.json()) {
            Ok(()) => DigestOutcome::Posted,
            Err(e) => DigestOutcome::PostFailed(e.to_string()),
        });
    }
    if n.admins.is_empty() && n.webhook.is_none() {
        outcomes.push(DigestOutcome::Unsent);
    }
    outcomes
}

/// Hands `message` to Postfix's `sendmail -C config_directory`, envelope sender `from`
/// (empty: the null sender, as for bounces), for `recipients`.
pub fn send_mail(
    postfix: &PostfixSettings,
    from: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<(), DeliverError> {
    if let Some(bad) = recipients
        .iter()
        .find(|r| r.starts_with('-') || r.trim().is_empty())
    {
        return Err(DeliverError::Address(bad.clone()));
    }
    let mut cmd = Command::new(&postfix.sendmail);
    cmd.arg("-C")
        .arg(&postfix.config_directory)
        .arg("-i")
        .arg("-f")
        .arg(if from.is_empty() { "<>" } else { from })
        .arg("--")
        .args(recipients);
    process::run(cmd, Some(message), COMMAND_TIMEOUT)?;
    Ok(())
}

/// Sends `message` by SMTP to `relay`, envelope sender `from` (empty: null sender).
pub fn send_smtp(
    relay: &(String, u16),
    timeout: Duration,
    from: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<(), DeliverError> {
    let smtp_error = |message: String| DeliverError::Smtp {
        relay: format!("{}:{}", relay.0, relay.1),
        message,
    };
    let sender = if from.is_empty() {
        None
    } else {
        Some(
            from.parse()
                .map_err(|_| DeliverError::Address(from.to_owned()))?,
        )
    };
    let to = recipients
        .iter()
        .map(|r| r.parse().map_err(|_| DeliverError::Address(r.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let envelope = Envelope::new(sender, to).map_err(|e| smtp_error(e.to_string()))?;
    let transport = SmtpTransport::builder_dangerous(relay.0.as_str())
        .port(relay.1)
        .timeout(Some(timeout))
        .hello_name(ClientId::Domain(super::hostname()))
        .build();
    transport
        .send_raw(&envelope, message)
        .map(|_| ())
        .map_err(|e| {
            if e.is_permanent() {
                DeliverError::Refused {
                    relay: format!("{}:{}", relay.0, relay.1),
                    message: e.to_string(),
                }
            } else {
                smtp_error(e.to_string())
            }
        })
}

impl DeliverError {
    /// True when sending the same mail again cannot succeed: a bad address, or a relay
    /// that refused it for good.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DeliverError::Address(_) | DeliverError::Refused { .. }
        )
    }
}

/// Posts `body` as JSON to `url`; each attempt bounded by `timeout`, retried with
/// backoff on network errors, 429 and 5xx. Errors show the URL redacted.
pub fn post_webhook(
    secret_url: &SecretUrl,
    timeout: Duration,
    body: &Value,
) -> Result<(), DeliverError> {
    let url = secret_url.expose();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .user_agent(format!("{}/{}", crate::NAME, crate::VERSION))
        .build()
        .into();
    let payload = body.to_string();
    let mut pause = WEBHOOK_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let retry = match agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(payload.as_bytes())
        {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                last = format!("HTTP {status}");
                status.as_u16() == 429 || status.is_server_error()
            }
            Err(e) => {
                last = redact_url_in(&e.to_string(), url);
                true
            }
        };
        if !retry {
            return Err(DeliverError::Webhook {
                url: secret_url.redacted(),
                message: last,
                attempts: attempt,
            });
        }
        if attempt < WEBHOOK_ATTEMPTS {
            std::thread::sleep(pause);
            pause *= 2;
        }
    }
    Err(DeliverError::Webhook {
        url: secret_url.redacted(),
        message: last,
        attempts: WEBHOOK_ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::path::PathBuf;

    /// Answers each connection with the next status of `statuses`; returns the port and
    /// a counter of requests served.
    fn http(statuses: Vec<u16>) -> (u16, std::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for status in statuses {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    request.push_str(&line);
                }
                let _ = tx.send(request);
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        (port, rx)
    }

    #[test]
    fn webhook_retries_server_errors_then_succeeds() {
        let (port, requests) = http(vec![503, 200]);
        let url = SecretUrl::from(format!("http://127.0.0.1:{port}/hook"));
        post_webhook(&url, Duration::from_secs(5), &serde_json::json!({"a": 1}))
            .expect("second attempt succeeds");
        let first = requests.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(first.starts_with("POST /hook"), "{first}");
        assert!(
            first
                .to_lowercase()
                .contains("content-type: application/json"),
            "{first}"
        );
        assert!(
            requests.recv_timeout(Duration::from_secs(5)).is_ok(),
            "retried"
        );
    }

    #[test]
    fn webhook_does_not_retry_a_client_error() {
        let (port, requests) = http(vec![404, 200]);
        let url = SecretUrl::from(format!("http://127.0.0.1:{port}/services/T0/B0/SECRET"));
        let err = post_webhook(&url, Duration::from_secs(5), &serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("HTTP 404"), "{err}");
        assert!(
            !err.to_string().contains("SECRET") && err.to_string().contains("127.0.0.1"),
            "{err}"
        );
        assert!(err.to_string().contains("after 1 attempts"), "{err}");
        requests.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn webhook_to_a_closed_port_fails_after_every_attempt() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = post_webhook(
            &format!("http://user:pw0@127.0.0.1:{port}/services/T0/B0/SECRET?token=tok0#frag0")
                .into(),
            Duration::from_secs(2),
            &serde_json::json!({}),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("after {WEBHOOK_ATTEMPTS} attempts")),
            "{text}"
        );
        for secret in ["pw0", "SECRET", "tok0", "frag0"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn sendmail_refuses_option_like_recipients_and_reports_failures() {
        let settings = PostfixSettings {
            config_directory: PathBuf::from("/nonexistent"),
            command_directory: PathBuf::from("/nonexistent"),
            sendmail: PathBuf::from("/bin/false"),
            recipient_delimiter: Default::default(),
            delimiter_origin: crate::config::DelimiterOrigin::Config,
            myorigin: String::new(),
            myorigin_origin: crate::config::MyoriginOrigin::Config,
        };
        assert!(matches!(
            send_mail(&settings, "", &["-bi".into()], b"x"),
            Err(DeliverError::Address(_))
        ));
        assert!(matches!(
            send_mail(&settings, "", &["ann@corp.example".into()], b"x"),
            Err(DeliverError::Sendmail(RunError::Failed { .. }))
        ));
    }

    #[test]
    fn smtp_to_a_closed_port_is_an_error_naming_the_relay() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = send_smtp(
            &("127.0.0.1".into(), port),
            Duration::from_secs(2),
            "",
            &["admins@corp.example".into()],
            b"Subject: x\r\n\r\nx\r\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[test]
    fn a_digest_goes_to_each_configured_channel_once() {
        let digest = Digest {
            alerts: Vec::new(),
            dropped: 1,
            host: "relay".into(),
            desk: None,
        };
        let mut n = NotifySettings {
            sender_interval: std::time::Duration::from_secs(600),
            sender_notices_per_minute: 60,
            admins: Vec::new(),
            webhook: None,
            interval: Duration::from_secs(60),
            webhook_timeout: Duration::from_secs(5),
            from: "postmaster@corp.example".into(),
            relay: ("127.0.0.1".into(), 25),
        };
        let never = |_: &[String], _: &[u8]| -> Result<(), DeliverError> {
            panic!("no admins: nothing is mailed")
        };
        assert_eq!(deliver_digest(&n, &digest, never), [DigestOutcome::Unsent]);

        n.admins = vec!["admin@corp.example".into()];
        let mailed = std::cell::RefCell::new(Vec::new());
        let record = |to: &[String], _: &[u8]| {
            mailed.borrow_mut().push(to.to_vec());
            Ok(())
        };
        assert_eq!(
            deliver_digest(&n, &digest, record),
            [DigestOutcome::Mailed(vec!["admin@corp.example".into()])]
        );
        assert_eq!(*mailed.borrow(), [vec!["admin@corp.example".to_owned()]]);

        let (port, requests) = http(vec![200]);
        n.webhook = Some(SecretUrl::from(format!("http://127.0.0.1:{port}/hook")));
        let refused = |_: &[String], _: &[u8]| Err(DeliverError::Address("-x".into()));
        assert_eq!(
            deliver_digest(&n, &digest, refused),
            [
                DigestOutcome::MailFailed("bad recipient address \"-x\"".into()),
                DigestOutcome::Posted
            ],
            "a failed mail does not keep the webhook from being told"
        );
        assert!(requests.recv_timeout(Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn with_one_click_links_each_admin_gets_a_mail_of_their_own() {
        let digest = Digest {
            alerts: Vec::new(),
            dropped: 1,
            host: "relay".into(),
            desk: Some(crate::notify::DeskLinks {
                public_url: "https://review.corp.example".into(),
                relay: None,
                actions: Some(crate::notify::ActionLinks {
                    key: [1; crate::link::KEY_BYTES],
                    expires: 100,
                }),
            }),
        };
        let n = NotifySettings {
            sender_interval: std::time::Duration::from_secs(600),
            sender_notices_per_minute: 60,
            admins: vec!["ann@corp.example".into(), "bob@corp.example".into()],
            webhook: None,
            interval: Duration::from_secs(60),
            webhook_timeout: Duration::from_secs(5),
            from: "postmaster@corp.example".into(),
            relay: ("127.0.0.1".into(), 25),
        };
        let mailed = std::cell::RefCell::new(Vec::new());
        let record = |to: &[String], _: &[u8]| {
            mailed.borrow_mut().push(to.to_vec());
            if to[0].starts_with("bob") {
                Err(DeliverError::Address("bob".into()))
            } else {
                Ok(())
            }
        };
        assert_eq!(
            deliver_digest(&n, &digest, record),
            [
                DigestOutcome::Mailed(vec!["ann@corp.example".into()]),
                DigestOutcome::MailFailed(
                    "to bob@corp.example: bad recipient address \"bob\"".into()
                ),
            ]
        );
        assert_eq!(
            *mailed.borrow(),
            [
                vec!["ann@corp.example".to_owned()],
                vec!["bob@corp.example".to_owned()]
            ]
        );
    }
}
