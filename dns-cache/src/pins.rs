//! Pins as leases: a pin belongs to the dns.sock connection that took it and ends with it.
//!
//! host-server pins a dummy address while a connection through it is open, so the mapping is
//! never recycled under that connection. A bare counter in the table would leak if host-server
//! died between Pin and Unpin: the mapping would stay pinned forever. So each dns.sock
//! connection owns a [`PinLeases`] that records which dummies it pinned and how many times; an
//! Unpin only gives back a pin that the same connection took, and when the connection ends
//! (EOF, read error, host-server killed) [`PinLeases::release`] gives back every pin it still
//! holds. [`Drop`] releases too, so a lease set cannot outlive its connection by accident.
//!
//! The pin count in the mapping table (and in the database's `pins` column, written with the
//! next batch) is therefore always the sum of the live connections' leases. No connection
//! exists before dns-cache starts, so every stored count is reset to 0 at start
//! ([`crate::store::Store::reset_pins`], [`crate::mapping::MappingTable::load`]); host-server
//! takes its pins again after it reconnects.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::persist::Mappings;

/// Why a pin or unpin was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinError {
    /// No live mapping has that address.
    #[error("no mapping for {0}")]
    NotMapped(Ipv4Addr),
    /// This connection holds no pin on that address (pins of other connections are theirs).
    #[error("{0} is not pinned by this connection")]
    NotPinnedHere(Ipv4Addr),
    /// The connection has ended; its leases were released.
    #[error("the connection has closed")]
    Closed,
}

#[derive(Debug, Default)]
struct Held {
    /// Pins this connection took, per dummy.
    counts: HashMap<Ipv4Addr, u32>,
    /// Set once the leases were released; later pins are refused.
    closed: bool,
}

/// The pins one dns.sock connection holds.
#[derive(Debug)]
pub struct PinLeases {
    mappings: Arc<Mappings>,
    held: Mutex<Held>,
}

impl PinLeases {
    /// An empty lease set for a new connection.
    pub fn new(mappings: Arc<Mappings>) -> Self {
        Self {
            mappings,
            held: Mutex::new(Held::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Every update below leaves the map consistent before it can panic.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pins `dummy` for this connection; returns the mapping's pin count over all connections.
    pub fn pin(&self, dummy: Ipv4Addr) -> Result<u32, PinError> {
        // The lease lock is held across the table update so that a concurrent release sees
        // either no pin or a recorded one, never a pin it does not know about.
        let mut held = self.lock();
        if held.closed {
            return Err(PinError::Closed);
        }
        let direction = self
            .mappings
            .owner(dummy)
            .ok_or(PinError::NotMapped(dummy))?;
        let now = self.mappings.now();
        let pins = self
            .mappings
            .with_table(direction, |t| t.pin(dummy, now))
            .map_err(|_| PinError::NotMapped(dummy))?;
        *held.counts.entry(dummy).or_default() += 1;
        drop(held);
        self.mappings.nudge();
        Ok(pins)
    }

    /// Gives back one of this connection's pins on `dummy`; returns the remaining count over
    /// all connections.
    pub fn unpin(&self, dummy: Ipv4Addr) -> Result<u32, PinError> {
        let mut held = self.lock();
        let Some(count) = held.counts.get_mut(&dummy) else {
            return Err(PinError::NotPinnedHere(dummy));
        };
        *count -= 1;
        if *count == 0 {
            held.counts.remove(&dummy);
        }
        let result = self.unpin_table(dummy);
        drop(held);
        self.mappings.nudge();
        result
    }

    fn unpin_table(&self, dummy: Ipv4Addr) -> Result<u32, PinError> {
        let direction = self
            .mappings
            .owner(dummy)
            .ok_or(PinError::NotMapped(dummy))?;
        let now = self.mappings.now();
        self.mappings
            .with_table(direction, |t| t.unpin(dummy, now))
            // A pinned mapping is never recycled, so a failure here means the table and the
            // lease disagree; the lease is gone either way.
            .map_err(|_| PinError::NotMapped(dummy))
    }

    /// How many pins this connection holds on `dummy`.
    pub fn held(&self, dummy: Ipv4Addr) -> u32 {
        self.lock().counts.get(&dummy).copied().unwrap_or(0)
    }

    /// Ends the leases: every pin this connection still holds is given back (each restarts the
    /// mapping's grace period, as an Unpin would) and later pins are refused. Returns how many
    /// pins were given back; a second call gives back nothing.
    pub fn release(&self) -> u32 {
        let mut held = self.lock();
        held.closed = true;
        let counts = std::mem::take(&mut held.counts);
        let mut released = 0u32;
        for (dummy, n) in counts {
            for _ in 0..n {
                if self.unpin_table(dummy).is_ok() {
                    released = released.saturating_add(1);
                }
            }
        }
        drop(held);
        if released > 0 {
            self.mappings.nudge();
        }
        released
    }
}

impl Drop for PinLeases {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, UnixMillis};
    use crate::mapping::{Direction, MappingTable};
    use crate::store::Store;
    use std::net::Ipv6Addr;
    use std::time::Duration;

    fn mappings() -> Arc<Mappings> {
        Mappings::start(
            Store::open_in_memory().unwrap(),
            MappingTable::new(
                "10.170.160.0/29".parse().unwrap(),
                Direction::Synthesised,
                Duration::ZERO,
            ),
            MappingTable::new(
                "172.21.112.0/29".parse().unwrap(),
                Direction::InboundPeer,
                Duration::ZERO,
            ),
            Arc::new(ManualClock::new(UnixMillis(1_000_000))),
        )
        .unwrap()
    }

    fn pins(m: &Mappings, v4: Ipv4Addr) -> u32 {
        m.with_table(Direction::Synthesised, |t| t.get(v4).unwrap().pins)
    }

    #[tokio::test]
    async fn each_connection_gives_back_only_its_own_pins() {
        let m = mappings();
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let r = m
            .map_durable(Direction::Synthesised, &[(v6, None)], Duration::ZERO)
            .await
            .unwrap();
        let v4 = r[0].v4;
        let a = PinLeases::new(Arc::clone(&m));
        let b = PinLeases::new(Arc::clone(&m));
        assert_eq!(a.pin(v4), Ok(1));
        assert_eq!(a.pin(v4), Ok(2));
        assert_eq!(b.pin(v4), Ok(3));
        assert_eq!(a.held(v4), 2);
        // b cannot give back a's pins.
        assert_eq!(b.unpin(v4), Ok(2));
        assert_eq!(b.unpin(v4), Err(PinError::NotPinnedHere(v4)));
        assert_eq!(pins(&m, v4), 2);
        // a's connection ends: both of its pins go, and it takes no more.
        assert_eq!(a.release(), 2);
        assert_eq!(pins(&m, v4), 0);
        assert_eq!(a.release(), 0);
        assert_eq!(a.pin(v4), Err(PinError::Closed));
        // Dropping a lease set releases it as well.
        assert_eq!(b.pin(v4), Ok(1));
        drop(b);
        assert_eq!(pins(&m, v4), 0);
        // Without pins and past its TTL and (zero) grace, the mapping can be recycled.
        let free = m.with_table(Direction::Synthesised, |t| {
            (0..5)
                .map(|i| {
                    t.map(
                        Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0100_u128 + i),
                        None,
                        Duration::ZERO,
                        m.now(),
                    )
                })
                .filter(Result::is_ok)
                .count()
        });
        assert_eq!(free, 5, "4 fresh addresses and the unpinned one");
        assert_eq!(
            m.with_table(Direction::Synthesised, |t| t.lookup_v6(v6)),
            None
        );
        m.shutdown();
    }

    #[tokio::test]
    async fn unknown_addresses_are_refused() {
        let m = mappings();
        let a = PinLeases::new(Arc::clone(&m));
        let v4 = Ipv4Addr::new(10, 170, 160, 3);
        assert_eq!(a.pin(v4), Err(PinError::NotMapped(v4)));
        assert_eq!(a.unpin(v4), Err(PinError::NotPinnedHere(v4)));
        assert_eq!(a.release(), 0);
        m.shutdown();
    }
}
