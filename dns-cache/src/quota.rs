//! Per-tenant quotas on new destination dummies: each tenant (a VM or a uid, named by
//! host-server in `DnsQueryAs`; a DNS client address for the UDP/TCP listeners) may make
//! `dummy_quota_per_minute` new mappings a minute, with a burst of as many. A token bucket per
//! tenant: it holds at most one minute's worth and refills continuously. An answer that would
//! allocate beyond it is REFUSED for that tenant only, and counted
//! (`outsock_dns_quota_refused_total`); other tenants, and the tenant's answers that need no
//! new address, are untouched.
//!
//! Which tenant a resolve works for travels with the task that answers it ([`scope`],
//! [`current`]), so the resolving rules need no extra argument; a resolve outside any scope
//! (tests, internal callers) is not charged.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::UnixMillis;

/// Past this many tenants, buckets that are full again are forgotten (a full bucket is the same
/// as no bucket).
const FORGET_ABOVE: usize = 65_536;

/// One minute, in the buckets' time unit.
const MINUTE_MS: u64 = 60_000;

tokio::task_local! {
    static TENANT: Arc<str>;
}

/// Runs `f` on behalf of `tenant`: allocations inside it are charged to that tenant.
pub async fn scope<F: Future>(tenant: Arc<str>, f: F) -> F::Output {
    TENANT.scope(tenant, f).await
}

/// The tenant the current task works for, if any.
pub fn current() -> Option<Arc<str>> {
    TENANT.try_with(Arc::clone).ok()
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens × [`MINUTE_MS`], so that refilling needs no fractions.
    scaled: u64,
    at: UnixMillis,
}

/// The buckets of every tenant.
#[derive(Debug)]
pub struct DummyQuota {
    per_minute: u64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl DummyQuota {
    /// A quota of `per_minute` new dummies per tenant and minute (at least 1).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: u64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` new dummies from `tenant`'s bucket at `now`; `false` (nothing taken) when it
    /// holds fewer.
    pub fn take(&self, tenant: &Arc<str>, n: u64, now: UnixMillis) -> bool {
        let full = self.per_minute * MINUTE_MS;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= FORGET_ABOVE && !buckets.contains_key(tenant) {
            let per_minute = self.per_minute;
            buckets.retain(|_, b| refilled(*b, per_minute, now) < full);
        }
        let b = buckets.entry(Arc::clone(tenant)).or_insert(Bucket {
            scaled: full,
            at: now,
        });
        b.scaled = refilled(*b, self.per_minute, now);
        b.at = b.at.max(now);
        let need = n.saturating_mul(MINUTE_MS);
        if b.scaled < need {
            return false;
        }
        b.scaled -= need;
        true
    }
}

/// The bucket's scaled tokens at `now`: `per_minute` tokens a minute, capped at one minute's.
fn refilled(b: Bucket, per_minute: u64, now: UnixMillis) -> u64 {
    let elapsed = now.0.saturating_sub(b.at.0);
    b.scaled
        .saturating_add(elapsed.saturating_mul(per_minute))
        .min(per_minute * MINUTE_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_a_minutes_worth_then_refills_alone() {
        let q = DummyQuota::new(10);
        let a: Arc<str> = Arc::from("vm:a");
        let b: Arc<str> = Arc::from("uid:1000");
        let t0 = UnixMillis(1_000_000);
        assert!(q.take(&a, 8, t0));
        assert!(q.take(&a, 2, t0));
        assert!(!q.take(&a, 1, t0));
        // Another tenant is untouched.
        assert!(q.take(&b, 10, t0));
        // Six seconds give one back (10 a minute).
        assert!(!q.take(&a, 1, UnixMillis(t0.0 + 5_999)));
        assert!(q.take(&a, 1, UnixMillis(t0.0 + 6_000)));
        // Never more than a minute's worth, however long it waited.
        assert!(!q.take(&a, 11, UnixMillis(t0.0 + 3_600_000)));
        assert!(q.take(&a, 10, UnixMillis(t0.0 + 3_600_000)));
        // A refused take costs nothing.
        assert!(q.take(&b, 1, UnixMillis(t0.0 + 6_000)));
    }

    #[tokio::test]
    async fn the_tenant_travels_with_the_task() {
        assert!(current().is_none());
        let seen = scope(Arc::from("vm:x"), async { current() }).await;
        assert_eq!(seen.as_deref(), Some("vm:x"));
    }
}
