//! Per-identity limits: how many sockets, listeners and pending connects one VM or one user may
//! hold. Counting is a plain table behind a mutex (the critical sections are a few integer
//! operations); each admitted resource holds a [`Permit`] that gives its slot back on drop, so no
//! exit path can leak a count.
//!
//! The errno for each refusal mirrors what Linux says for the nearest native limit:
//! sockets → EMFILE (the per-process descriptor limit), listeners → ENOBUFS (no room to set up
//! another listening socket), pending connects → EAGAIN (try again later, as a connect does
//! when the kernel is out of resources for it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shared_proto::Errno;

use crate::awaiting::{Awaiting, AwaitingRequests};
use crate::config::LimitSettings;
use crate::identity::Identity;

/// What a permit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Socket,
    Listener,
    PendingConnect,
}

impl Resource {
    /// The errno a refusal carries.
    #[must_use]
    pub fn errno(self) -> Errno {
        match self {
            Self::Socket => Errno::EMFILE,
            Self::Listener => Errno::ENOBUFS,
            Self::PendingConnect => Errno::EAGAIN,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Socket => 0,
            Self::Listener => 1,
            Self::PendingConnect => 2,
        }
    }
}

#[derive(Debug)]
struct Table {
    max: [u32; 3],
    /// Identities with limits of their own (`[vms.NAME.limits]`).
    own: HashMap<Identity, [u32; 3]>,
    used: HashMap<Identity, [u32; 3]>,
}

/// The shared limit table.
#[derive(Debug, Clone)]
pub struct Limits {
    table: Arc<Mutex<Table>>,
    /// Streams awaiting their request, per peer uid (before any identity is known).
    awaiting: AwaitingRequests,
}

/// One admitted resource; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    table: Arc<Mutex<Table>>,
    identity: Identity,
    resource: Resource,
}

impl Limits {
    #[must_use]
    pub fn new(s: &LimitSettings) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table {
                max: [s.max_sockets, s.max_listeners, s.max_pending_connects],
                own: HashMap::new(),
                used: HashMap::new(),
            })),
            awaiting: AwaitingRequests::new(s.max_awaiting_request),
        }
    }

    /// As [`Self::new`], with limits of their own for some identities (a VM's
    /// `[vms.NAME.limits]`), which replace `s` for them.
    #[must_use]
    pub fn with_overrides<'a>(
        s: &LimitSettings,
        own: impl IntoIterator<Item = (Identity, &'a LimitSettings)>,
    ) -> Self {
        let l = Self::new(s);
        lock(&l.table).own = own
            .into_iter()
            .map(|(i, s)| (i, [s.max_sockets, s.max_listeners, s.max_pending_connects]))
            .collect();
        l
    }

    /// Counts a stream of peer uid `uid` that has not sent its request yet; `None` when the
    /// uid already has `limits.max_awaiting_request` such streams (the stream is refused).
    #[must_use]
    pub fn awaiting_request(&self, uid: u32) -> Option<Awaiting> {
        self.awaiting.enter(uid)
    }

    /// Takes a slot of `resource` for `identity`, or says which errno refuses it.
    ///
    /// # Errors
    /// The resource's errno when the identity holds its maximum.
    pub fn acquire(&self, identity: &Identity, resource: Resource) -> Result<Permit, Errno> {
        let mut t = lock(&self.table);
        let max = t.own.get(identity).unwrap_or(&t.max)[resource.index()];
        let used = t.used.entry(identity.clone()).or_default();
        if used[resource.index()] >= max {
            return Err(resource.errno());
        }
        used[resource.index()] += 1;
        Ok(Permit {
            table: Arc::clone(&self.table),
            identity: identity.clone(),
            resource,
        })
    }

    /// How many of `resource` `identity` holds.
    #[must_use]
    pub fn used(&self, identity: &Identity, resource: Resource) -> u32 {
        lock(&self.table)
            .used
            .get(identity)
            .map_or(0, |u| u[resource.index()])
    }

    /// Sockets held across every identity (draining waits for this to reach zero).
    #[must_use]
    pub fn total_sockets(&self) -> u64 {
        lock(&self.table)
            .used
            .values()
            .map(|u| u64::from(u[Resource::Socket.index()]))
            .sum()
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    // A panic while holding this lock leaves only counters behind, which stay consistent
    // because every update is a single increment or decrement.
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        let emptied = match t.used.get_mut(&self.identity) {
            Some(u) => {
                let slot = &mut u[self.resource.index()];
                *slot = slot.saturating_sub(1);
                u.iter().all(|n| *n == 0)
            }
            None => false,
        };
        if emptied {
            t.used.remove(&self.identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_at_the_limit_and_frees_on_drop() {
        let l = Limits::new(&LimitSettings {
            max_sockets: 2,
            max_listeners: 1,
            max_pending_connects: 1,
            ..LimitSettings::default()
        });
        let a = Identity::Process { uid: 1 };
        let b = Identity::Vm("web".into());
        let p1 = l.acquire(&a, Resource::Socket).unwrap();
        let _p2 = l.acquire(&a, Resource::Socket).unwrap();
        assert_eq!(l.acquire(&a, Resource::Socket).unwrap_err(), Errno::EMFILE);
        // Another identity has its own budget.
        let _q = l.acquire(&b, Resource::Socket).unwrap();
        assert_eq!(l.total_sockets(), 3);
        drop(p1);
        assert_eq!(l.used(&a, Resource::Socket), 1);
        let _p3 = l.acquire(&a, Resource::Socket).unwrap();
        let _li = l.acquire(&a, Resource::Listener).unwrap();
        assert_eq!(
            l.acquire(&a, Resource::Listener).unwrap_err(),
            Errno::ENOBUFS
        );
        let _pc = l.acquire(&a, Resource::PendingConnect).unwrap();
        assert_eq!(
            l.acquire(&a, Resource::PendingConnect).unwrap_err(),
            Errno::EAGAIN
        );
    }

    #[test]
    fn an_identity_with_its_own_limits() {
        let global = LimitSettings::default();
        let small = LimitSettings {
            max_sockets: 1,
            ..LimitSettings::default()
        };
        let vm = Identity::Vm("small".into());
        let l = Limits::with_overrides(&global, [(vm.clone(), &small)]);
        let _p = l.acquire(&vm, Resource::Socket).unwrap();
        assert_eq!(l.acquire(&vm, Resource::Socket).unwrap_err(), Errno::EMFILE);
        let other = Identity::Vm("big".into());
        let _a = l.acquire(&other, Resource::Socket).unwrap();
        let _b = l.acquire(&other, Resource::Socket).unwrap();
    }

    #[test]
    fn empty_identities_are_forgotten() {
        let l = Limits::new(&LimitSettings::default());
        let a = Identity::Process { uid: 7 };
        drop(l.acquire(&a, Resource::Socket).unwrap());
        assert!(lock(&l.table).used.is_empty());
    }
}
