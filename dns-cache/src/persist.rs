//! The two mapping tables shared by the DNS server and dns.sock, and the single writer thread
//! that makes their changes durable.
//!
//! Group commit: whoever allocates an address wakes the writer and waits until the change number
//! of that allocation is committed; the writer drains every pending change of both tables into
//! one transaction, so many concurrent allocations cost one commit. Touches (last use, expiry,
//! pins: one small UPDATE per mapping) and new names ride along with the next batch or the
//! periodic flush, so losing one to `kill -9` only shortens a grace period by at most the flush
//! interval; an address is never handed out before the row that binds it is committed.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::{Clock, UnixMillis};
use crate::mapping::{Direction, Dirty, MapResult, Mapping, MappingError, MappingTable, Touch};
use crate::store::{Store, StoreError};

/// How often touches are written when nothing else wakes the writer.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long an answer waits for its mapping to be committed before giving up (SERVFAIL).
const COMMIT_WAIT: Duration = Duration::from_secs(3);

/// Why a persisted mapping operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The mapping policy refused.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// The database could not be opened or read.
    #[error("mapping database")]
    Store(#[from] StoreError),
    /// The mapping was not committed in time (the database is failing or stuck).
    #[error("the new mapping was not committed within {0:?}")]
    CommitTimeout(Duration),
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
        let waited = tokio::time::timeout(COMMIT_WAIT, async {
            rx.wait_for(|c| c[i] >= seq).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(PersistError::WriterGone),
            Err(_) => Err(PersistError::CommitTimeout(COMMIT_WAIT)),
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

fn writer_loop(
    mut store: Store,
    mappings: &std::sync::Weak<Mappings>,
    wake: &mpsc::Receiver<()>,
    committed: &watch::Sender<[u64; 2]>,
) {
    let mut failures = 0u32;
    loop {
        let last = match wake.recv_timeout(FLUSH_INTERVAL) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        // Coalesce every wake-up queued so far into this one batch.
        while wake.try_recv().is_ok() {}
        let Some(m) = mappings.upgrade() else { return };
        let d = lock(&m.dest).drain_dirty();
        let s = lock(&m.source).drain_dirty();
        let nothing =
            |x: &Dirty| x.upserts.is_empty() && x.touches.is_empty() && x.deletes.is_empty();
        if nothing(&d) && nothing(&s) {
            committed.send_replace([d.seq, s.seq]);
        } else {
            let upserts: Vec<Mapping> = d.upserts.iter().chain(&s.upserts).cloned().collect();
            let touches: Vec<Touch> = d.touches.iter().chain(&s.touches).copied().collect();
            let deletes: Vec<Ipv4Addr> = d.deletes.iter().chain(&s.deletes).copied().collect();
            match store.write_changes(&upserts, &touches, &deletes) {
                Ok(()) => {
                    failures = 0;
                    committed.send_replace([d.seq, s.seq]);
                }
                Err(error) => {
                    failures += 1;
                    tracing::error!(%error, failures, "cannot write mappings; will retry");
                    for (table, x) in [(&m.dest, &d), (&m.source, &s)] {
                        let mut t = lock(table);
                        t.mark_dirty(x.upserts.iter().map(|u| u.v4).chain(x.deletes.clone()));
                        t.mark_touched(x.touches.iter().map(|u| u.v4));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    if !last {
                        continue;
                    }
                }
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
