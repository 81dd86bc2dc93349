// SPDX-License-Identifier: GPL-3.0-or-later
//! The single owner of the generation in force. Reloads (SIGHUP, tests) and new LDAP
//! snapshots (the refresher) are events sent to one task, which builds each new
//! generation and swaps it in, one event at a time: no two writers can overwrite each
//! other's newer result, and no lock is needed for it. A reload keeps the running
//! values of restart-only settings ([`Config::keep_restart_only`]).

use crate::config::{self, Config, ConfigError};
use crate::desk::{ListSizeError, ListSizes};
use crate::directory::DirectoryError;
use crate::directory::drift::{AcceptError, Accepted, accept_current_size};
use crate::directory::ldap::Snapshots;
use crate::shared::{Generation, Shared};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// A reload request; the answer says whether the new configuration was taken.
pub type ReloadRequest = oneshot::Sender<Result<Reloaded, ReloadError>>;

/// A reload that was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings the file changed that need a restart: their running values stay in
    /// force (see [`Config::keep_restart_only`]).
    pub restart_needed: Vec<&'static str>,
}

/// Why a reload was refused; the previous configuration and directory stay in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A directory source could not be loaded.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The loader task failed.
    #[error("reload task failed: {0}")]
    Task(String),
}

/// Why new snapshots were not put in force; the previous generation stays.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The directory could not be built from them.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The rebuild task failed (a panic); the previous generation stays.
    #[error("directory rebuild task failed: {0}")]
    Task(String),
    /// The owner has stopped (the daemon is shutting down).
    #[error("the daemon is stopping")]
    Stopped,
}

/// What the owner is asked to do.
enum Event {
    /// Re-read the configuration file; answer the caller.
    Reload(ReloadRequest),
    /// Rebuild the directory of the configuration in force with these snapshots.
    Snapshots {
        snapshots: Snapshots,
        done: oneshot::Sender<Result<(), RebuildError>>,
    },
    /// Accept a drifted list's current size and rebuild the directory with it.
    AcceptSize {
        list: String,
        done: oneshot::Sender<Result<Accepted, ListSizeError>>,
    },
}

/// The owner's queue, before its task runs: the daemon hands out [`Owner`] handles
/// (the review desk's) while it starts, and runs the owner with [`Inbox::spawn`].
pub struct Inbox {
    events: mpsc::Receiver<Event>,
    reloaded: Arc<Notify>,
}

impl Inbox {
    /// Starts the owner of `shared`'s generation, which was built with `snapshots`; it
    /// serves `reloads` and the events of its [`Owner`] handles until both are closed.
    pub fn spawn(
        self,
        shared: Arc<Shared>,
        snapshots: Snapshots,
        reloads: mpsc::Receiver<ReloadRequest>,
    ) -> JoinHandle<()> {
        tokio::spawn(own(shared, snapshots, reloads, self.events, self.reloaded))
    }
}

/// A handle on the generation owner, to send it new LDAP snapshots.
#[derive(Clone)]
pub struct Owner {
    events: mpsc::Sender<Event>,
    reloaded: Arc<Notify>,
}

impl Owner {
    /// Starts the owner of `shared`'s generation, which was built with `snapshots`; it
    /// serves `reloads` and the snapshots sent through the returned handle until both
    /// are closed.
    #[cfg(test)]
    pub fn spawn(
        shared: Arc<Shared>,
        snapshots: Snapshots,
        reloads: mpsc::Receiver<ReloadRequest>,
    ) -> (Owner, JoinHandle<()>) {
        let (owner, inbox) = Owner::new();
        (owner, inbox.spawn(shared, snapshots, reloads))
    }

    /// A handle and the queue it sends to; nothing is served until [`Inbox::spawn`].
    pub fn new() -> (Owner, Inbox) {
        let (events, receiver) = mpsc::channel(8);
        let reloaded = Arc::new(Notify::new());
        (
            Owner {
                events,
                reloaded: reloaded.clone(),
            },
            Inbox {
                events: receiver,
                reloaded,
            },
        )
    }

    /// Rebuilds the directory of the configuration in force with `snapshots` and puts
    /// it in force; later reloads use these snapshots too.
    pub async fn rebuild(&self, snapshots: Snapshots) -> Result<(), RebuildError> {
        let (done, answer) = oneshot::channel();
        self.events
            .send(Event::Snapshots { snapshots, done })
            .await
            .map_err(|_| RebuildError::Stopped)?;
        answer.await.map_err(|_| RebuildError::Stopped)??;
        Ok(())
    }

    /// Notified after each reload that was taken (sources may have come or gone).
    pub fn reloaded(&self) -> Arc<Notify> {
        self.reloaded.clone()
    }
}

#[async_trait::async_trait]
impl ListSizes for Owner {
    /// Accepts the list's size in the directory in force, writes it to the list-size
    /// file and puts a directory built with it in force, in the owner's turn (no
    /// reload or refresh runs meanwhile).
    async fn accept(&self, list: &str) -> Result<Accepted, ListSizeError> {
        let (done, answer) = oneshot::channel();
        let stopped = || ListSizeError::Failed("the daemon is stopping".into());
        self.events
            .send(Event::AcceptSize {
                list: list.to_owned(),
                done,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The owner's loop: one event at a time.
async fn own(
    shared: Arc<Shared>,
    mut snapshots: Snapshots,
    mut reloads: mpsc::Receiver<ReloadRequest>,
    mut events: mpsc::Receiver<Event>,
    reloaded: Arc<Notify>,
) {
    loop {
        let event = tokio::select! {
            Some(ack) = reloads.recv() => Event::Reload(ack),
            Some(event) = events.recv() => event,
            else => return,
        };
        match event {
            Event::Reload(ack) => {
                let answer = reload(&shared, &snapshots).await;
                if answer.is_ok() {
                    reloaded.notify_one();
                }
                let _ = ack.send(answer);
            }
            Event::Snapshots {
                snapshots: fresh,
                done,
            } => {
                snapshots = fresh.clone();
                let config = shared.current().config.clone();
                let loaded =
                    tokio::task::spawn_blocking(move || Generation::load(config, &fresh)).await;
                let result = match loaded {
                    Ok(Ok(generation)) => {
                        shared.replace(generation);
                        Ok(())
                    }
                    Ok(Err(e)) => Err(RebuildError::Directory(e)),
                    Err(e) => {
                        error!("directory rebuild task failed: {e}");
                        Err(RebuildError::Task(e.to_string()))
                    }
                };
                let _ = done.send(result);
            }
            Event::AcceptSize { list, done } => {
                let _ = done.send(accept_size(&shared, &snapshots, list).await);
            }
        }
    }
}

/// Accepts `list`'s size in the directory in force and puts in force a directory of
/// the same configuration and snapshots built with it: the next message to the list
/// is judged against its new size. When the rebuild fails, the size stays accepted in
/// the file (a reload or refresh puts it in force) and the error says so.
async fn accept_size(
    shared: &Shared,
    snapshots: &Snapshots,
    list: String,
) -> Result<Accepted, ListSizeError> {
    let current = shared.current();
    let mut ldap = snapshots.clone();
    ldap.now = shared.now();
    let work = move || {
        let accepted =
            accept_current_size(&current.directory.index, &current.config.state_dir, &list)
                .map_err(|e| match e {
                    AcceptError::NotAList(a) => ListSizeError::NotAList(a),
                    AcceptError::State(e) => ListSizeError::Failed(e.to_string()),
                })?;
        let generation = Generation::load(current.config.clone(), &ldap).map_err(|e| {
            ListSizeError::Failed(format!(
                "the size was accepted, but the directory was not rebuilt (a reload puts it \
                 in force): {e}"
            ))
        })?;
        Ok::<_, ListSizeError>((accepted, generation))
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok((accepted, generation))) => {
            shared.replace(generation);
            info!(
                list = %crate::text::neutralize(&accepted.address),
                size = accepted.size,
                previous = ?accepted.previous,
                "list size accepted; the directory in force uses it"
            );
            Ok(accepted)
        }
        Ok(Err(e)) => {
            error!(
                "list size not accepted: {}",
                crate::text::neutralize(&e.to_string())
            );
            Err(e)
        }
        Err(e) => {
            error!("list size task failed: {e}");
            Err(ListSizeError::Failed(format!("the task failed: {e}")))
        }
    }
}

/// Reads the running configuration's file again and, when it is good, puts it in force
/// with the directory loaded for it and the latest snapshots.
async fn reload(shared: &Shared, snapshots: &Snapshots) -> Result<Reloaded, ReloadError> {
    let current = shared.current();
    let running = current.clone();
    let mut ldap = snapshots.clone();
    ldap.now = shared.now();
    let result =
        match tokio::task::spawn_blocking(move || load_generation(&running.config, &ldap)).await {
            Ok(r) => r,
            Err(e) => Err(ReloadError::Task(e.to_string())),
        };
    match result {
        Ok((new, restart_needed)) => {
            for key in &restart_needed {
                warn!(
                    "parameter \"{key}\" changed, restart needed for it to take effect; the running value stays in force"
                );
            }
            shared.replace(new);
            shared.metrics.reloaded(true, shared.now());
            info!(file = %current.config.file.display(), "configuration reloaded");
            Ok(Reloaded { restart_needed })
        }
        Err(e) => {
            shared.metrics.reloaded(false, shared.now());
            error!("configuration not reloaded, keeping the old one: {e}");
            Err(e)
        }
    }
}

/// Reads the running configuration's file again, keeps the running values of the
/// restart-only settings (before the directory records list sizes in the state
/// directory), and loads the directory for it.
fn load_generation(
    running: &Config,
    ldap: &Snapshots,
) -> Result<(Generation, Vec<&'static str>), ReloadError> {
    let mut config = config::load(&running.file)?;
    let restart_needed = running.keep_restart_only(&mut config);
    config.postfix.log_delimiter();
    Ok((Generation::load(config, ldap)?, restart_needed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::directory::ldap::{self, fake::FakeDirectory};
    use crate::quarantine::Store;
    use crate::state::{Guard, MemoryBackend};
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    /// A reload rebuilds the directory with the snapshots the last refresh put in
    /// force, not with those the daemon started with.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_uses_the_snapshots_of_the_last_rebuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("fanout-milter.toml");
        std::fs::write(
            &file,
            format!(
                "[domains]\ninternal = [\"corp.example\"]\n[quarantine]\nstate_dir = \"{}\"\n\
                 [[directory]]\ntype = \"ldap\"\nname = \"corp\"\nurl = \"ldap://dc1.corp.example\"\n\
                 base_dns = [\"dc=corp,dc=example\"]\ndomains = [\"corp.example\"]\n",
                dir.path().display()
            ),
        )
        .expect("write the configuration");
        let config = config::load(&file).expect("configuration");
        let settings = config.directories[0].ldap.clone().expect("ldap");
        let mut fake = FakeDirectory::active_directory();
        let people: Vec<String> = ["ann", "bob"]
            .iter()
            .map(|p| {
                let dn = format!("cn={p},ou=staff,dc=corp,dc=example");
                fake.person(&dn, &format!("{p}@corp.example"));
                dn
            })
            .collect();
        fake.group(
            "cn=team,ou=groups,dc=corp,dc=example",
            Some("team@corp.example"),
            &people,
        );
        let snap = ldap::take(&mut fake, &settings).await.expect("snapshot");

        let none = Snapshots {
            by_source: HashMap::new(),
            now: SystemTime::now(),
        };
        let generation = Generation::load(config, &none).expect("directory");
        let (alerts, _receiver) = crate::notify::channel(16);
        let shared = Arc::new(Shared::new(
            generation,
            Arc::new(Store::open(dir.path()).expect("store")),
            alerts,
            Guard::new(Arc::new(MemoryBackend::new()), Arc::new(SystemClock), None),
        ));
        let (reload, reloads) = mpsc::channel(1);
        let (owner, _owning) = Owner::spawn(shared.clone(), none, reloads);
        let team = |shared: &Shared| {
            shared
                .current()
                .directory
                .audience_facts(["team@corp.example"])
                .expect("configured")
                .total
        };
        let reloaded = owner.reloaded();

        owner
            .rebuild(Snapshots {
                by_source: HashMap::from([("corp".to_owned(), Arc::new(snap))]),
                now: SystemTime::now(),
            })
            .await
            .expect("rebuilt");
        assert_eq!(team(&shared), 2);

        let (ack, answer) = oneshot::channel();
        reload.send(ack).await.expect("the owner runs");
        let answer = answer.await.expect("the owner answers");
        assert_eq!(answer.expect("reloaded").restart_needed, Vec::<&str>::new());
        assert_eq!(team(&shared), 2, "built with the refreshed snapshot");
        tokio::time::timeout(Duration::from_secs(5), reloaded.notified())
            .await
            .expect("the refresher is told of the reload");
    }

    /// An accepted list size is in force for the next message at once, written to the
    /// list-size file, and later loads judge against it; a mailbox is refused and the
    /// generation in force stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_accepted_list_size_is_in_force_for_the_next_message() {
        use crate::directory::drift::KnownSizes;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let file = dir.path().join("fanout-milter.toml");
        std::fs::write(
            &file,
            format!(
                "[domains]\ninternal = [\"corp.example\"]\n[quarantine]\nstate_dir = \"{}\"\n\
                 [drift]\nfactor = 2.0\nmin_audience = 3\n\
                 [[list]]\naddress = \"all@corp.example\"\nmembers = [\"a@corp.example\", \
                 \"b@corp.example\", \"c@corp.example\", \"d@corp.example\"]\n",
                state.display()
            ),
        )
        .expect("write the configuration");
        let mut known = KnownSizes::default();
        known.accept("all@corp.example", 1);
        known.save(&state).expect("save the sizes");
        let config = config::load(&file).expect("configuration");
        let none = Snapshots {
            by_source: HashMap::new(),
            now: SystemTime::now(),
        };
        let shared = Arc::new(Shared::new(
            Generation::load(config, &none).expect("directory"),
            Arc::new(Store::open(&state).expect("store")),
            crate::notify::channel(16).0,
            Guard::new(Arc::new(MemoryBackend::new()), Arc::new(SystemClock), None),
        ));
        let drift = |shared: &Shared| {
            shared
                .current()
                .directory
                .audience_facts(["all@corp.example"])
                .expect("configured")
                .lists[0]
                .drift_from
        };
        assert_eq!(drift(&shared), Some(1), "drifted: 4 > 2 x 1");
        let (_reload, reloads) = mpsc::channel(1);
        let (owner, _owning) = Owner::spawn(shared.clone(), none, reloads);
        let sizes: Arc<dyn ListSizes> = Arc::new(owner);

        let before = shared.current();
        let e = sizes.accept("a@corp.example").await.expect_err("a mailbox");
        assert!(matches!(e, ListSizeError::NotAList(_)), "{e}");
        assert!(Arc::ptr_eq(&before, &shared.current()), "nothing replaced");

        let accepted = sizes.accept("ALL@corp.example").await.expect("accepted");
        assert_eq!(
            (&*accepted.address, accepted.size, accepted.previous),
            ("all@corp.example", 4, Some(1))
        );
        assert_eq!(drift(&shared), None, "the next message: no drift");
        assert_eq!(
            KnownSizes::load(&state).expect("sizes").lists["all@corp.example"].accepted,
            4
        );
        let config = config::load(&file).expect("configuration");
        let again = Generation::load(config, &Snapshots::default()).expect("directory");
        assert_eq!(
            again
                .directory
                .audience_facts(["all@corp.example"])
                .expect("configured")
                .lists[0]
                .drift_from,
            None,
            "a restart judges against it too"
        );
    }
}
