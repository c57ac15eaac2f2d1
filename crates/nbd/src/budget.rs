//! The server-wide budget of READ/WRITE buffer bytes (WRITE payloads read, READ replies not
//! yet sent), so that clients which send large requests and never read the replies cannot
//! together hold more than a set amount of memory.
//!
//! Each connection has a small guaranteed floor ([`CONN_FLOOR_BYTES`]) of its own, and all of
//! them share one pool ([`MemoryBudget`], `--max-buffered`). A request takes its bytes from
//! its connection's floor when they fit there, else from the shared pool; when neither has
//! room, the connection's reader waits (it stops reading requests: backpressure, never an
//! allocation failure). Stalled clients can exhaust the shared pool but never another
//! connection's floor, so a client with typical requests (64 KiB to 4 MiB) keeps being served.
//! In all, request and reply buffers never exceed `max_buffered + connections ×
//! CONN_FLOOR_BYTES`.
//!
//! The fast path (a request that fits the floor) is one uncontended `try_acquire` on the
//! connection's own semaphore; the shared pool is touched only when the floor is full.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Unit of every byte budget (the semaphores count units of this many bytes).
pub const BUDGET_UNIT: usize = 1024;

/// Each connection's guaranteed share of buffer bytes, outside the shared pool: 4 MiB, enough
/// for one request of the usual sizes (Linux and qemu send at most 128 KiB to 4 MiB).
pub const CONN_FLOOR_BYTES: usize = 4 << 20;

/// The smallest shared pool: one request of the protocol's 32 MiB maximum must fit.
pub const MIN_MAX_BUFFERED: usize = 32 << 20;

/// Upper end of [`default_max_buffered`]: 2 GiB.
pub const DEFAULT_MAX_BUFFERED_CAP: usize = 2 << 30;

/// The default shared pool: a quarter of `mem_total` bytes (the machine's RAM), at least
/// [`MIN_MAX_BUFFERED`] and at most [`DEFAULT_MAX_BUFFERED_CAP`]. `None` (RAM unknown):
/// 512 MiB.
pub fn default_max_buffered_for(mem_total: Option<u64>) -> usize {
    match mem_total {
        Some(m) => usize::try_from(m / 4)
            .unwrap_or(usize::MAX)
            .clamp(MIN_MAX_BUFFERED, DEFAULT_MAX_BUFFERED_CAP),
        None => 512 << 20,
    }
}

/// [`default_max_buffered_for`] this machine's `MemTotal` (`/proc/meminfo`).
pub fn default_max_buffered() -> usize {
    default_max_buffered_for(mem_total())
}

/// `MemTotal` of `/proc/meminfo` in bytes; `None` if it cannot be read.
fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&info)
}

/// The `MemTotal:   N kB` line of a `/proc/meminfo` text, in bytes.
fn parse_mem_total(info: &str) -> Option<u64> {
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Bytes to budget units, rounded up, at least one (a request without data still counts).
pub fn units_of(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX)
}

/// The server-wide shared pool (cheap to clone: all clones share it).
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    shared: Arc<Semaphore>,
    units: u32,
}

impl MemoryBudget {
    /// A shared pool of `max_buffered` bytes (raised to [`MIN_MAX_BUFFERED`] if smaller, so
    /// the largest request can always be served).
    pub fn new(max_buffered: usize) -> MemoryBudget {
        let units = units_of(max_buffered.max(MIN_MAX_BUFFERED))
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        MemoryBudget {
            shared: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// The pool's size in bytes.
    pub fn capacity(&self) -> usize {
        self.units as usize * BUDGET_UNIT
    }

    /// Bytes of the pool not taken right now.
    pub fn available(&self) -> usize {
        self.shared.available_permits() * BUDGET_UNIT
    }

    /// A new connection's budget: a fresh floor of [`CONN_FLOOR_BYTES`] plus this pool.
    pub fn connection(&self) -> ConnBudget {
        ConnBudget {
            floor: Arc::new(Semaphore::new(CONN_FLOOR_BYTES / BUDGET_UNIT)),
            shared: self.shared.clone(),
            shared_units: self.units,
        }
    }
}

/// One connection's view of the budget: its own floor and the server's shared pool.
#[derive(Debug)]
pub struct ConnBudget {
    floor: Arc<Semaphore>,
    shared: Arc<Semaphore>,
    shared_units: u32,
}

/// Floor size in units.
const FLOOR_UNITS: u32 = (CONN_FLOOR_BYTES / BUDGET_UNIT) as u32;

impl ConnBudget {
    /// `units` at once if the floor, or else the shared pool, has them now; `None` if not.
    pub fn try_take(&self, units: u32) -> Option<OwnedSemaphorePermit> {
        if units <= FLOOR_UNITS {
            if let Ok(p) = self.floor.clone().try_acquire_many_owned(units) {
                return Some(p);
            }
        }
        self.shared
            .clone()
            .try_acquire_many_owned(units.min(self.shared_units))
            .ok()
    }

    /// `units` (a request's bytes, [`units_of`]), waiting as long as it takes: from the floor
    /// if they fit there, else from the shared pool, whichever frees up first. A request
    /// larger than the whole pool takes the whole pool. Cancel-safe (dropping the future
    /// takes nothing). The permit gives the units back when dropped.
    pub async fn take(&self, units: u32) -> OwnedSemaphorePermit {
        if let Some(p) = self.try_take(units) {
            return p;
        }
        let shared = self
            .shared
            .clone()
            .acquire_many_owned(units.min(self.shared_units));
        let r = if units <= FLOOR_UNITS {
            tokio::select! {
                p = self.floor.clone().acquire_many_owned(units) => p,
                p = shared => p,
            }
        } else {
            shared.await
        };
        r.expect("budget semaphores are never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIB: usize = 1 << 20;

    /// Whether `take(units)` completes without waiting.
    async fn ready(b: &ConnBudget, units: u32) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(Duration::from_millis(50), b.take(units))
            .await
            .ok()
    }

    #[test]
    fn default_is_a_quarter_of_ram_within_bounds() {
        assert_eq!(default_max_buffered_for(Some(8 << 30)), 2 << 30);
        assert_eq!(
            default_max_buffered_for(Some(64 << 30)),
            DEFAULT_MAX_BUFFERED_CAP
        );
        assert_eq!(default_max_buffered_for(Some(64 << 20)), MIN_MAX_BUFFERED);
        assert_eq!(default_max_buffered_for(Some(1 << 30)), 256 << 20);
        assert_eq!(default_max_buffered_for(None), 512 << 20);
        let info = "MemTotal:       24684000 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total(info), Some(24684000 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB"), None);
    }

    #[test]
    fn pool_is_at_least_one_maximal_request() {
        assert_eq!(MemoryBudget::new(0).capacity(), MIN_MAX_BUFFERED);
        assert_eq!(MemoryBudget::new(100 * MIB).capacity(), 100 * MIB);
        assert_eq!(units_of(0), 1);
        assert_eq!(units_of(BUDGET_UNIT + 1), 2);
    }

    #[tokio::test]
    async fn floor_first_then_shared_pool() {
        let pool = MemoryBudget::new(64 * MIB);
        let c = pool.connection();
        // Up to the floor: the shared pool is untouched.
        let f = c.try_take(units_of(4 * MIB)).expect("the floor has 4 MiB");
        assert_eq!(pool.available(), 64 * MIB);
        // The floor is full: the next request comes from the pool.
        let s = c.try_take(units_of(MIB)).expect("the pool has room");
        assert_eq!(pool.available(), 63 * MIB);
        // Larger than the floor: always the pool.
        let big = ready(&c, units_of(32 * MIB))
            .await
            .expect("pool has 63 MiB");
        assert_eq!(pool.available(), 31 * MIB);
        drop((f, s, big));
        assert_eq!(pool.available(), 64 * MIB);
    }

    #[tokio::test]
    async fn stalled_connections_cannot_starve_a_floor() {
        let pool = MemoryBudget::new(64 * MIB);
        let stalled: Vec<ConnBudget> = (0..4).map(|_| pool.connection()).collect();
        // Two of them take the whole pool with 32 MiB requests and hold it.
        let held: Vec<_> = stalled[..2]
            .iter()
            .map(|c| c.try_take(units_of(32 * MIB)).expect("room"))
            .collect();
        assert_eq!(pool.available(), 0);
        // The others now wait (backpressure) instead of allocating.
        assert!(ready(&stalled[2], units_of(32 * MIB)).await.is_none());
        // A normal connection still gets its 1 MiB requests from its floor, again and again.
        let normal = pool.connection();
        for _ in 0..10 {
            let p = ready(&normal, units_of(MIB))
                .await
                .expect("the floor is free");
            drop(p);
        }
        // Once the floor is in use, a waiting request gets whichever frees first.
        let in_use = normal.try_take(units_of(4 * MIB)).expect("floor");
        let w = normal.take(units_of(MIB));
        tokio::pin!(w);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut w)
                .await
                .is_err(),
            "floor and pool are both full"
        );
        drop(in_use); // the floor frees first
        let _p = tokio::time::timeout(Duration::from_millis(50), w)
            .await
            .expect("the floor's units came back");
        drop(held);
        assert_eq!(pool.available(), 64 * MIB);
    }

    #[tokio::test]
    async fn a_request_larger_than_the_pool_takes_all_of_it() {
        let pool = MemoryBudget::new(MIN_MAX_BUFFERED);
        let c = pool.connection();
        let p = ready(&c, units_of(64 * MIB)).await.expect("whole pool");
        assert_eq!(pool.available(), 0);
        drop(p);
        assert_eq!(pool.available(), MIN_MAX_BUFFERED);
    }
}
