// SPDX-License-Identifier: GPL-3.0-or-later
//! The daemon's alert queue: the mail path drops an alert in without waiting (a full
//! queue counts it as dropped), and one task sends at most one digest per
//! `[notify] interval`, by SMTP and by webhook, off the mail path.

use super::{Alert, DeskLinks, Digest, DigestOutcome, deliver};
use crate::config::NotifySettings;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Alerts waiting for the next digest, at most.
pub const QUEUE_CAPACITY: usize = 10_000;

/// Deadline of each SMTP step when mailing a digest.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The mail path's end of the queue. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct AlertSender {
    tx: mpsc::Sender<Alert>,
    dropped: Arc<AtomicU64>,
}

/// The digest task's end of the queue.
#[derive(Debug)]
pub struct AlertReceiver {
    rx: mpsc::Receiver<Alert>,
    dropped: Arc<AtomicU64>,
}

/// A queue of `capacity` alerts.
pub fn channel(capacity: usize) -> (AlertSender, AlertReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        AlertSender {
            tx,
            dropped: dropped.clone(),
        },
        AlertReceiver { rx, dropped },
    )
}

impl AlertSender {
    /// Queues an alert; never waits. A full or closed queue counts it as dropped (the
    /// next digest says how many), since the store keeps every held message anyway.
    pub fn send(&self, alert: Alert) {
        if self.tx.try_send(alert).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(
                    dropped = n,
                    "alert queue full: alerts dropped (held messages are still recorded)"
                );
            }
        }
    }
}

impl AlertReceiver {
    /// Waits for the next alert; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Alert> {
        self.rx.recv().await
    }

    /// Takes what is queued now, up to `max`, and the dropped count.
    pub fn drain(&mut self, first: Alert, max: usize) -> (Vec<Alert>, u64) {
        let mut alerts = vec![first];
        while alerts.len() < max {
            match self.rx.try_recv() {
                Ok(a) => alerts.push(a),
                Err(_) => break,
            }
        }
        (alerts, self.dropped.swap(0, Ordering::Relaxed))
    }
}

/// Sends digests until every sender is gone. The first alert after a quiet spell goes
/// out at once; later ones wait until `interval` has passed since the last digest.
/// `settings` is read for every digest, so a reload takes effect; it returns `None`
/// once the daemon is gone. `desk` gives each digest its links to the review desk
/// (one-click links expire counting from that call).
pub async fn run_digests(
    queue: AlertReceiver,
    settings: impl Fn() -> Option<NotifySettings>,
    desk: impl Fn() -> Option<DeskLinks>,
) {
    run_with(queue, settings, desk, Arc::new(deliver_digest)).await;
}

type Deliver = Arc<dyn Fn(&NotifySettings, &Digest) + Send + Sync>;

async fn run_with(
    mut queue: AlertReceiver,
    settings: impl Fn() -> Option<NotifySettings>,
    desk: impl Fn() -> Option<DeskLinks>,
    send: Deliver,
) {
    let mut last: Option<Instant> = None;
    while let Some(first) = queue.recv().await {
        let Some(n) = settings() else { break };
        if let Some(last) = last {
            tokio::time::sleep_until(last + n.interval).await;
        }
        let (alerts, dropped) = queue.drain(first, QUEUE_CAPACITY);
        let digest = Digest {
            alerts,
            dropped,
            host: super::hostname(),
            desk: desk(),
        };
        last = Some(Instant::now());
        let send = send.clone();
        let sent = tokio::task::spawn_blocking(move || send(&n, &digest)).await;
        if let Err(e) = sent {
            error!("alert digest task failed: {e}");
        }
    }
}

/// Sends one digest by mail (SMTP to the relay) and by webhook; logs each outcome.
fn deliver_digest(n: &NotifySettings, digest: &Digest) {
    let count = digest.alerts.len();
    let smtp =
        |to: &[String], mail: &[u8]| deliver::send_smtp(&n.relay, SMTP_TIMEOUT, "", to, mail);
    for outcome in deliver::deliver_digest(n, digest, smtp) {
        match outcome {
            DigestOutcome::Mailed(to) => {
                info!(alerts = count, to = %to.join(","), "alert digest mailed")
            }
            DigestOutcome::MailFailed(e) => error!(alerts = count, "alert digest mail failed: {e}"),
            DigestOutcome::Posted => {
                let url = n
                    .webhook
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                info!(alerts = count, url = %url, "alert digest posted")
            }
            DigestOutcome::PostFailed(e) => {
                error!(alerts = count, "alert digest webhook failed: {e}")
            }
            DigestOutcome::Unsent => {
                info!(alerts = count, summary = %digest.summary(), "alerts (no [notify] admins or webhook configured)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::AlertKind;
    use super::*;
    use std::time::{Duration, SystemTime};

    fn alert(i: u64) -> Alert {
        Alert {
            kind: AlertKind::Quarantined,
            at: SystemTime::UNIX_EPOCH,
            queue_id: Some(format!("Q{i:08}")),
            sender: "ann@corp.example".into(),
            subject: format!("m{i}"),
            audience: i,
            reason: String::new(),
            held_for: None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let (tx, mut rx) = channel(2);
        for i in 0..5 {
            tx.send(alert(i));
        }
        let first = rx.recv().await.unwrap();
        let (alerts, dropped) = rx.drain(first, 100);
        assert_eq!(alerts.len(), 2);
        assert_eq!(dropped, 3);
        let (_, dropped) = rx.drain(alert(9), 100);
        assert_eq!(dropped, 0, "the count restarts after each digest");
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_one_digest_per_interval() {
        let (tx, rx) = channel(100);
        let settings = NotifySettings {
            sender_interval: std::time::Duration::from_secs(600),
            sender_notices_per_minute: 60,
            admins: Vec::new(),
            webhook: None,
            interval: Duration::from_secs(60),
            webhook_timeout: Duration::from_secs(1),
            from: "postmaster".into(),
            relay: ("127.0.0.1".into(), 25),
        };
        let sent: Arc<std::sync::Mutex<Vec<(Instant, usize)>>> = Arc::default();
        let record = sent.clone();
        let start = Instant::now();
        let task = tokio::spawn(run_with(
            rx,
            move || Some(settings.clone()),
            || None,
            Arc::new(move |_: &NotifySettings, d: &Digest| {
                record
                    .lock()
                    .unwrap()
                    .push((Instant::now(), d.alerts.len()))
            }),
        ));
        tx.send(alert(1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        for i in 2..50 {
            tx.send(alert(i));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(300), task)
            .await
            .unwrap()
            .unwrap();
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent[0].1, 1, "the first alert goes out at once");
        assert!(sent[0].0 - start < Duration::from_secs(1));
        assert_eq!(
            sent.iter().map(|s| s.1).sum::<usize>(),
            49,
            "every alert is in a digest"
        );
        for pair in sent.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= Duration::from_secs(60), "{sent:?}");
        }
        assert_eq!(sent.len(), 2, "{sent:?}");
    }
}
