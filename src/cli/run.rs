// SPDX-License-Identifier: GPL-3.0-or-later
//! `fanout-milter run`: serves the milter until SIGTERM or SIGINT; SIGHUP reloads.

use super::load_config;
use crate::config::Config;
use crate::{VERSION, daemon, logging};
use std::path::Path;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

/// Loads the configuration, sets up logging and serves until a signal stops it.
pub fn run(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(e) => return super::exit(Err(e)),
    };
    // What the daemon creates (state directory, quarantine store, LDAP snapshots, list
    // sizes) holds subjects and recipients: its own user's only, with or without systemd.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    logging::init(&config.raw.logging.level, config.raw.logging.format);
    let runtime = match runtime_builder(config.threads).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(config))
}

/// One thread by default: waking one thread for each of Postfix's packets costs less
/// than handing work between threads (scripts/bench-pipeline measured 135-170 us of milter
/// CPU per message against 220-290 us with a worker per core).
fn runtime_builder(threads: usize) -> tokio::runtime::Builder {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
}

async fn serve(config: Config) -> ExitCode {
    info!(version = VERSION, config = %config.file.display(), mode = config.policy.mode.as_str(), "starting");
    let daemon = match daemon::Builder::new(config).start().await {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    let generation = daemon.generation();
    let config = &generation.config;
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            error!("cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    if let Some(warning) = config.listen.exposure_warning() {
        warn!("{warning}");
    }
    info!(listen = %config.listen, "listening");

    let (reload_tx, reload_rx) = mpsc::channel(4);
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM received"); break; }
                _ = int.recv() => { info!("SIGINT received"); break; }
                _ = hup.recv() => {
                    info!("SIGHUP received, reloading configuration");
                    let (ack, _) = oneshot::channel();
                    let _ = reload_tx.send(ack).await;
                }
            }
        }
        let _ = shutdown_tx.send(());
    });
    let shutdown = async move {
        let _ = shutdown_rx.await;
    };
    match daemon.run(reload_rx, shutdown).await {
        Ok(()) => {
            info!("shut down");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("milter stopped: {e}");
            ExitCode::from(1)
        }
    }
}
