// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter quarantine worker`: the root process that carries out the action
//! requests the review desk (and the digest links) file in the quarantine store, with
//! Postfix's tools ([`Executor`]). It runs as its own systemd unit
//! (`systemd/fanout-milter-worker.service`), so that the daemon serving the desk never
//! needs root.
//!
//! At start and then four times a second it looks at every open request: a pending one
//! is carried out; a running one whose claimant is gone (this worker before a crash, or
//! an admin command killed mid-way; see [`crate::quarantine::claimant`]), or is this worker, whose outcome
//! could not be written (see [`Executor::left_over`]), is finished from the facts
//! ([`Executor::resume`]), while one another live process is carrying out is left to it; a
//! release to chosen recipients whose copy is on its way is looked at again
//! ([`Executor::check_copy`]). SIGTERM or SIGINT lets the request in progress finish,
//! then the worker exits 0.

use crate::clock::epoch_secs;
use crate::config::Config;
use crate::quarantine::postfix::PostfixTools;
use crate::quarantine::{
    Executed, Executor, QuarantineIndex, Request, RequestAction, RequestState, Store,
};
use crate::{VERSION, logging};
use nix::sys::signal::{SigSet, Signal};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};
use tracing::{error, info, warn};

/// How often the worker looks for new requests.
///
/// Polling rather than a notification: the store is a SQLite file that the daemon (as
/// its own user), the admin commands and the worker (as root) share, and the desk may
/// later file requests into a fleet-wide store on another host; a poll works the same
/// for every writer, needs no socket the unprivileged daemon could use to reach a root
/// process, and cannot miss a wake-up (a request filed while the worker is busy or
/// restarting is found by the next poll). Each poll is one indexed query of the open
/// requests (`requests_state`), usually none: about 4 cheap reads a second, well inside
/// the desk's promise to act within a second.
pub const POLL: Duration = Duration::from_millis(250);

/// Serves requests until SIGTERM or SIGINT.
pub fn serve(config: &Config, store: &Store) -> ExitCode {
    logging::init(&config.raw.logging.level, config.raw.logging.format);
    let stop = match stop_signals() {
        Ok(rx) => rx,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        warn!("not running as root: postsuper will refuse to act");
    }
    let executor = Executor {
        config,
        store,
        postfix: PostfixTools::new(config.postfix.clone()),
    };
    info!(version = VERSION, store = %store.path().display(), "worker starting");
    match store.open_requests() {
        Ok(open) => {
            for request in open {
                if stopping(&stop) {
                    break;
                }
                look_at(&executor, &request);
            }
        }
        Err(e) => error!("cannot read the open requests: {e}"),
    }
    let mut failing: Option<String> = None;
    loop {
        match stop.recv_timeout(POLL) {
            Ok(_) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                error!("the signal thread ended, worker stopping");
                return ExitCode::from(1);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let open = match store.open_requests() {
            Ok(open) => {
                if failing.take().is_some() {
                    info!("the open requests can be read again");
                }
                open
            }
            Err(e) => {
                // Once per distinct error, not four times a second.
                let e = e.to_string();
                if failing.as_deref() != Some(e.as_str()) {
                    error!("cannot read the open requests: {e}");
                    failing = Some(e);
                }
                continue;
            }
        };
        for request in open {
            if stopping(&stop) {
                info!("worker stopped");
                return ExitCode::SUCCESS;
            }
            look_at(&executor, &request);
        }
    }
    info!("worker stopped");
    ExitCode::SUCCESS
}

/// One line about what became of a request.
fn log_outcome(request: &Request, done: &Executed) {
    info!(
        request = request.id,
        queue_id = %request.queue_id,
        action = request.action.name(),
        who = %request.who,
        via = request.via.as_str(),
        remote = request.remote.as_deref().unwrap_or("-"),
        state = if done.open {
            "running"
        } else if done.ok {
            "done"
        } else {
            "failed"
        },
        resumed = request.state == RequestState::Running,
        result = %done.result,
        "request"
    );
}

/// True once a stop signal came (it is taken from the channel).
fn stopping(stop: &mpsc::Receiver<Signal>) -> bool {
    match stop.try_recv() {
        Ok(_) => true,
        Err(mpsc::TryRecvError::Empty) => false,
        Err(mpsc::TryRecvError::Disconnected) => true,
    }
}

/// SIGTERM and SIGINT, blocked in every thread (the ones started later inherit the
/// mask; the Postfix tools the worker runs start with an empty one) and taken by a
/// thread of their own, which hands them to the loop: a request in progress is never
/// cut short by them.
fn stop_signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(std::io::Error::from)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                info!("{signal} received, worker stopping once the request in progress is done");
                if tx.send(signal).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// What an open request needs from this worker, if anything.
fn look_at(executor: &Executor<'_>, request: &Request) {
    match request.state {
        RequestState::Pending => carry_out(executor, request),
        RequestState::Running if matches!(request.action, RequestAction::ReleaseTo { .. }) => {
            check_copy(executor, request)
        }
        RequestState::Running if Executor::left_over(request) => carry_out(executor, request),
        _ => {}
    }
}

/// Takes the next step of a release to chosen recipients, and logs a line when it is
/// over.
fn check_copy(executor: &Executor<'_>, request: &Request) {
    match executor.check_copy(request, epoch_secs(SystemTime::now())) {
        Ok(Some(done)) if !done.open => log_outcome(request, &done),
        Ok(_) => {}
        Err(e) => error!(
            request = request.id,
            queue_id = %request.queue_id,
            "a release to chosen recipients not looked at: {e}"
        ),
    }
}

/// Carries out one open request and logs one line about it.
fn carry_out(executor: &Executor<'_>, request: &Request) {
    let now = epoch_secs(SystemTime::now());
    let outcome = match request.state {
        RequestState::Pending => executor.execute(request, now),
        RequestState::Running => executor.resume(request, now),
        RequestState::Done | RequestState::Failed => return,
    };
    match outcome {
        Ok(Some(done)) => log_outcome(request, &done),
        Ok(None) => info!(
            request = request.id,
            queue_id = %request.queue_id,
            "request taken by another process"
        ),
        Err(e) => error!(
            request = request.id,
            queue_id = %request.queue_id,
            "request not carried out, or its outcome not recorded (an open request is \
             looked at again when the worker starts): {e}"
        ),
    }
}
