//! The two mapping tables shared by the DNS server and dns.sock, and the single writer thread
//! that makes their changes durable.
//!
//! Group commit: whoever allocates an address wakes the writer and waits until the change number
//! of that allocation is committed; the writer drains every pending change of both tables into
//! one transaction, so many concurrent allocations cost one commit. Touches (last use, expiry,
//! pins: one small UPDATE per mapping) and new names ride along with the next batch or the
//! periodic flush, so losing one to `kill -9` only shortens a grace period by at most the flush
//! interval; an address is never handed out before the row that binds it is committed.
//!
//! Storage faults (a full or read-only file system, another process holding the write lock, I/O
//! errors): the failed batch goes back into the tables' dirty sets and is retried (100 ms,
//! doubling to 1 s) until it commits; one log line when writes start failing (with the kind of
//! fault and what to do), a reminder a minute, one line when they recover; [`Health`] feeds the
//! metrics. While writes fail an answer that needs a new mapping waits at most
//! [`FAILING_WAIT`] and is SERVFAIL, never an uncommitted dummy; mappings already committed keep
//! answering from memory. A read-only file system, an I/O error or a damaged file (or any fault
//! three times in a row) makes the writer close the database, so that no descriptor of dns-cache
//! keeps the file system busy while the operator repairs and mounts it again; it opens the file
//! again (never creating it) at each retry, and once open writes every mapping it holds again,
//! so whatever the fault lost of the file is restored from memory.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::clock::{Clock, UnixMillis};
use crate::mapping::{Direction, Dirty, MapResult, Mapping, MappingError, MappingTable, Touch};
use crate::store::{Fault, Store, StoreError};

/// How often touches are written when nothing else wakes the writer.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long an answer waits for its mapping to be committed before giving up (SERVFAIL).
const COMMIT_WAIT: Duration = Duration::from_secs(3);

/// The same wait while writes are known to fail: one retry's worth, then SERVFAIL at once
/// rather than after seconds (a resolver retries anyway).
pub const FAILING_WAIT: Duration = Duration::from_millis(300);

/// Retry pacing of a failing write.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Failures in a row after which the writer closes the database and opens it afresh, whatever
/// the fault (a connection may keep a broken state after the file system was repaired).
const REOPEN_AFTER: u32 = 3;

/// How often a lasting fault is logged again.
const REMIND_EVERY: Duration = Duration::from_secs(60);

/// The database's health as the writer sees it, for the metrics.
#[derive(Debug, Default)]
pub struct Health {
    /// Whether the last write failed.
    pub failing: AtomicBool,
    /// Failed writes in all.
    pub failed_writes: AtomicU64,
    /// Failed writes, by [`Fault::index`].
    pub failures: [AtomicU64; Fault::ALL.len()],
    /// Answers refused (SERVFAIL) because their new mapping was not committed.
    pub uncommitted_refused: AtomicU64,
    /// Fresh connections opened after faults.
    pub reopens: AtomicU64,
    /// The kind of the current (or last) fault, a [`Fault::index`].
    pub fault: AtomicUsize,
}

/// Why a persisted mapping operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The mapping policy refused.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// The database could not be opened or read.
    #[error("mapping database")]
    Store(#[from] StoreError),
    /// The mapping was not committed: a write failed, or none finished in time (the database
    /// is failing or stuck).
    #[error("the new mapping could not be committed (the database is failing or stuck)")]
    NotCommitted,
    /// The writer thread has stopped.
    #[error("the database writer has stopped")]
    WriterGone,
    /// The writer thread could not be started.
    #[error("cannot start the database writer thread")]
    Spawn(#[source] std::io::Error),
}

/// The mapping tables with their persistence.
#[derive(Debug)]
pub struct Mappings {
    dest: Mutex<MappingTable>,
    source: Mutex<MappingTable>,
    clock: Arc<dyn Clock>,
    wake: Mutex<Option<mpsc::Sender<()>>>,
    committed: watch::Receiver<[u64; 2]>,
    writer: Mutex<Option<JoinHandle<()>>>,
    health: Health,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a table half-updated in a way later calls
    // would trip on (every method restores its invariants before returning or panicking on an
    // internal contradiction), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn slot(direction: Direction) -> usize {
    match direction {
        Direction::Synthesised => 0,
        Direction::InboundPeer => 1,
    }
}

impl Mappings {
    /// Loads the store into the two tables and starts the writer thread, which owns the store.
    pub fn start(
        store: Store,
        mut dest: MappingTable,
        mut source: MappingTable,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, PersistError> {
        // Pins are leases of dns.sock connections (see `crate::pins`); none exists yet.
        let released = store.reset_pins()?;
        if released > 0 {
            tracing::info!(
                mappings = released,
                "released the pins of the previous run's dns.sock connections"
            );
        }
        let rows = store.load_all()?;
        let (d_rows, s_rows): (Vec<Mapping>, Vec<Mapping>) = rows
            .into_iter()
            .partition(|m| m.direction == Direction::Synthesised);
        for (table, rows) in [(&mut dest, d_rows), (&mut source, s_rows)] {
            let rejected = table.load(rows);
            for m in rejected {
                tracing::warn!(
                    ipv4 = %m.v4, ipv6 = %m.v6, pool = %table.prefix(),
                    "dropping a stored mapping that no longer fits its pool"
                );
            }
        }
        tracing::info!(
            destination = dest.len(),
            source = source.len(),
            "loaded mappings from the database"
        );
        let (wake_tx, wake_rx) = mpsc::channel();
        let (committed_tx, committed_rx) = watch::channel([0, 0]);
        let this = Arc::new(Self {
            dest: Mutex::new(dest),
            source: Mutex::new(source),
            clock,
            wake: Mutex::new(Some(wake_tx)),
            committed: committed_rx,
            writer: Mutex::new(None),
            health: Health::default(),
        });
        let weak = Arc::downgrade(&this);
        let handle = std::thread::Builder::new()
            .name("dns-cache-db".into())
            .spawn(move || writer_loop(store, &weak, &wake_rx, &committed_tx))
            .map_err(PersistError::Spawn)?;
        *lock(&this.writer) = Some(handle);
        Ok(this)
    }

    fn table(&self, direction: Direction) -> &Mutex<MappingTable> {
        match direction {
            Direction::Synthesised => &self.dest,
            Direction::InboundPeer => &self.source,
        }
    }

    /// The current time of this service's clock.
    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// The database's health, as the writer last saw it.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The guest DNS address (reserved in the destination pool).
    pub fn dns_address(&self) -> Option<Ipv4Addr> {
        lock(&self.dest).reserved()
    }

    /// Which table hands out `v4`, if either does.
    pub fn owner(&self, v4: Ipv4Addr) -> Option<Direction> {
        [Direction::Synthesised, Direction::InboundPeer]
            .into_iter()
            .find(|d| lock(self.table(*d)).owns(v4))
    }

    /// Runs `f` on the table of `direction` under its lock.
    pub fn with_table<R>(&self, direction: Direction, f: impl FnOnce(&mut MappingTable) -> R) -> R {
        f(&mut lock(self.table(direction)))
    }

    /// Maps several IPv6 addresses under one lock and returns their dummies once every new
    /// mapping is committed. `names` is the name each address was synthesised for.
    pub async fn map_durable(
        &self,
        direction: Direction,
        addrs: &[(Ipv6Addr, Option<&str>)],
        ttl: Duration,
    ) -> Result<Vec<MapResult>, PersistError> {
        let now = self.clock.now();
        let results = {
            let mut t = lock(self.table(direction));
            addrs
                .iter()
                .map(|(v6, name)| t.map(*v6, *name, ttl, now))
                .collect::<Result<Vec<_>, _>>()?
        };
        let need = results.iter().map(|r| r.durable_after).max().unwrap_or(0);
        self.wait_durable(direction, need).await?;
        Ok(results)
    }

    /// Sets the static mapping `v4` = `v6` in the destination table
    /// ([`MappingTable::set_static`]) and waits until it is committed; whether anything
    /// changed.
    pub async fn set_static(
        &self,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
        names: &[String],
    ) -> Result<bool, PersistError> {
        let now = self.clock.now();
        let (changed, seq) = {
            let mut t = lock(self.table(Direction::Synthesised));
            let changed = t.set_static(v4, v6, names, now)?;
            (changed, t.durable_after(v4))
        };
        if changed {
            self.nudge();
        }
        self.wait_durable(Direction::Synthesised, seq).await?;
        Ok(changed)
    }

    /// Waits until change number `seq` of the `direction` table is committed.
    pub async fn wait_durable(&self, direction: Direction, seq: u64) -> Result<(), PersistError> {
        let i = slot(direction);
        if self.committed.borrow()[i] >= seq {
            return Ok(());
        }
        if let Some(tx) = lock(&self.wake).as_ref() {
            // The writer may be gone; the wait below then reports it.
            let _ = tx.send(());
        }
        let mut rx = self.committed.clone();
        let limit = if self.health.failing.load(Ordering::Relaxed) {
            FAILING_WAIT
        } else {
            COMMIT_WAIT
        };
        // A write that fails after this point ends the wait at once (the writer wakes every
        // waiter when a write fails): SERVFAIL now rather than after the whole limit.
        let failed_before = self.health.failed_writes.load(Ordering::Relaxed);
        let waited = tokio::time::timeout(limit, async {
            rx.wait_for(|c| {
                c[i] >= seq || self.health.failed_writes.load(Ordering::Relaxed) > failed_before
            })
            .await
            .map(|c| c[i] >= seq)
        })
        .await;
        match waited {
            Ok(Ok(true)) => Ok(()),
            Ok(Err(_)) => Err(PersistError::WriterGone),
            Ok(Ok(false)) | Err(_) => {
                self.health
                    .uncommitted_refused
                    .fetch_add(1, Ordering::Relaxed);
                Err(PersistError::NotCommitted)
            }
        }
    }

    /// Wakes the writer so pending touches and pins are written soon.
    pub fn nudge(&self) {
        if let Some(tx) = lock(&self.wake).as_ref() {
            let _ = tx.send(());
        }
    }

    /// Whether the writer thread is still running (it only ends at shutdown or by a panic).
    pub fn writer_alive(&self) -> bool {
        lock(&self.writer)
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// Writes everything pending and stops the writer thread.
    pub fn shutdown(&self) {
        // Dropping the sender makes the writer do a last batch and exit.
        lock(&self.wake).take();
        if let Some(h) = lock(&self.writer).take() {
            if h.join().is_err() {
                tracing::error!("the database writer thread panicked");
            }
        }
    }
}

/// The writer's view of a fault episode: when it began, how it is logged.
struct Episode {
    since: Instant,
    failures: u32,
    reminded: Instant,
}

/// The writer's state: the open database (none while a fault made it let go of the file) and
/// the fault episode under way.
struct Writer {
    store: Option<Store>,
    location: Option<(std::path::PathBuf, crate::store::Durability)>,
    episode: Option<Episode>,
}

impl Writer {
    /// Opens the database again if a fault closed it; on success every mapping held is written
    /// again (the fault may have lost part of the file, or the file system mounted back may
    /// hold an older copy).
    fn ensure_open(&mut self, m: &Mappings) -> Result<(), StoreError> {
        if self.store.is_some() {
            return Ok(());
        }
        let Some((path, durability)) = &self.location else {
            return Ok(());
        };
        let fresh = Store::open_existing(path, *durability)?;
        self.store = Some(fresh);
        m.health.reopens.fetch_add(1, Ordering::Relaxed);
        for table in [&m.dest, &m.source] {
            lock(table).mark_all_dirty();
        }
        tracing::info!("opened the mapping database again; writing every mapping again");
        Ok(())
    }

    fn write(
        &mut self,
        upserts: &[Mapping],
        touches: &[Touch],
        deletes: &[Ipv4Addr],
    ) -> Result<(), StoreError> {
        match self.store.as_mut() {
            Some(s) => s.write_changes(upserts, touches, deletes),
            // Only a file-backed store is ever let go of, and `ensure_open` came first.
            None => Ok(()),
        }
    }

    /// A successful batch: ends a fault episode.
    fn succeeded(&mut self, m: &Mappings) {
        if let Some(e) = self.episode.take() {
            m.health.failing.store(false, Ordering::Relaxed);
            tracing::warn!(
                failed_writes = e.failures,
                after_ms = u64::try_from(e.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "mapping database writes recovered; every pending mapping is committed"
            );
        }
    }

    /// A failed batch (or reopening): counted, logged once per episode (and a reminder a
    /// minute), waiters woken; a fault that leaves the file unusable through this connection
    /// closes it, so the operator can repair and mount the file system again. Returns the pause
    /// before the next try.
    fn failed(
        &mut self,
        m: &Mappings,
        error: &StoreError,
        committed: &watch::Sender<[u64; 2]>,
    ) -> Duration {
        let fault = Fault::of(error);
        m.health.failures[fault.index()].fetch_add(1, Ordering::Relaxed);
        m.health.failed_writes.fetch_add(1, Ordering::Relaxed);
        m.health.fault.store(fault.index(), Ordering::Relaxed);
        m.health.failing.store(true, Ordering::Relaxed);
        let now = Instant::now();
        let e = self.episode.get_or_insert_with(|| {
            tracing::error!(
                %error, fault = fault.as_str(), hint = fault.hint(),
                "cannot write the mapping database; new mappings are answered SERVFAIL until \
                 writes succeed again (retrying)"
            );
            Episode {
                since: now,
                failures: 0,
                reminded: now,
            }
        });
        e.failures += 1;
        tracing::debug!(%error, fault = fault.as_str(), failed_writes = e.failures, "write failed");
        if now.duration_since(e.reminded) >= REMIND_EVERY {
            e.reminded = now;
            tracing::error!(
                %error, fault = fault.as_str(), failed_writes = e.failures,
                "the mapping database still cannot be written"
            );
        }
        let unusable = matches!(fault, Fault::ReadOnly | Fault::Io | Fault::Corrupt)
            || e.failures >= REOPEN_AFTER;
        if unusable && self.location.is_some() && self.store.take().is_some() {
            tracing::info!(
                fault = fault.as_str(),
                "closed the mapping database until it can be opened again"
            );
        }
        // Answers waiting for this batch give up now (SERVFAIL).
        committed.send_modify(|_| {});
        RETRY_FIRST
            .saturating_mul(1 << e.failures.min(4).saturating_sub(1))
            .min(RETRY_MAX)
    }
}

fn writer_loop(
    store: Store,
    mappings: &std::sync::Weak<Mappings>,
    wake: &mpsc::Receiver<()>,
    committed: &watch::Sender<[u64; 2]>,
) {
    let mut w = Writer {
        location: store.location(),
        store: Some(store),
        episode: None,
    };
    let mut pause = FLUSH_INTERVAL;
    let mut tries_left_at_stop = 2u32;
    loop {
        let last = match wake.recv_timeout(pause) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        // Coalesce every wake-up queued so far into this one batch.
        while wake.try_recv().is_ok() {}
        let Some(m) = mappings.upgrade() else { return };
        pause = FLUSH_INTERVAL;
        let outcome = w.ensure_open(&m).and_then(|()| {
            let d = lock(&m.dest).drain_dirty();
            let s = lock(&m.source).drain_dirty();
            let nothing =
                |x: &Dirty| x.upserts.is_empty() && x.touches.is_empty() && x.deletes.is_empty();
            if nothing(&d) && nothing(&s) {
                committed.send_replace([d.seq, s.seq]);
                return Ok(());
            }
            let upserts: Vec<Mapping> = d.upserts.iter().chain(&s.upserts).cloned().collect();
            let touches: Vec<Touch> = d.touches.iter().chain(&s.touches).copied().collect();
            let deletes: Vec<Ipv4Addr> = d.deletes.iter().chain(&s.deletes).copied().collect();
            let written = w.write(&upserts, &touches, &deletes);
            match &written {
                Ok(()) => {
                    committed.send_replace([d.seq, s.seq]);
                }
                Err(_) => {
                    for (table, x) in [(&m.dest, &d), (&m.source, &s)] {
                        let mut t = lock(table);
                        t.mark_dirty(x.upserts.iter().map(|u| u.v4).chain(x.deletes.clone()));
                        t.mark_touched(x.touches.iter().map(|u| u.v4));
                    }
                }
            }
            written
        });
        match outcome {
            Ok(()) => w.succeeded(&m),
            Err(error) => {
                // Paced, whatever wakes the writer meanwhile; then retried at once.
                std::thread::sleep(w.failed(&m, &error, committed));
                pause = Duration::ZERO;
                if last {
                    tries_left_at_stop -= 1;
                    if tries_left_at_stop == 0 {
                        tracing::error!(
                            %error,
                            "stopping with mapping changes the database did not take"
                        );
                        return;
                    }
                }
                continue;
            }
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn tables() -> (MappingTable, MappingTable) {
        (
            MappingTable::new(
                "10.170.160.0/20".parse().unwrap(),
                Direction::Synthesised,
                Duration::from_secs(60),
            ),
            MappingTable::new(
                "172.21.112.0/20".parse().unwrap(),
                Direction::InboundPeer,
                Duration::from_secs(60),
            ),
        )
    }

    #[tokio::test]
    async fn new_mappings_are_committed_before_they_are_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite3");
        let clock = Arc::new(ManualClock::new(UnixMillis(1_000)));
        let (d, s) = tables();
        let store = Store::open(&path, crate::store::Durability::ProcessCrash).unwrap();
        let m = Mappings::start(store, d, s, clock).unwrap();
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let r = m
            .map_durable(
                Direction::Synthesised,
                &[(v6, Some("x.test."))],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        // Another connection sees the row at once, without any shutdown or flush.
        let reader = Store::open(&path, crate::store::Durability::ProcessCrash).unwrap();
        let rows = reader.load_all().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].v4, r[0].v4);
        assert_eq!(rows[0].v6, v6);
        m.shutdown();

        // A restart loads the same mapping.
        let (d, s) = tables();
        let store = Store::open(&path, crate::store::Durability::ProcessCrash).unwrap();
        let clock = Arc::new(ManualClock::new(UnixMillis(2_000)));
        let m2 = Mappings::start(store, d, s, clock).unwrap();
        let again = m2.with_table(Direction::Synthesised, |t| t.lookup_v6(v6));
        assert_eq!(again, Some(r[0].v4));
        m2.shutdown();
    }
}
