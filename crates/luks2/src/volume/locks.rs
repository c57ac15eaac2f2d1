//! The region locks of a [`super::Volume`]: a fixed set of mutex stripes serialising the
//! read-modify-write of partial sectors (and TRIM) against every other write touching the same
//! bytes. Which stripes a byte range takes is a pure function ([`stripes`]).

use std::sync::{Mutex, MutexGuard};

/// Number of lock stripes guarding read-modify-write of partial sectors.
pub(crate) const LOCK_STRIPES: usize = 1024;
/// Bytes of the volume one lock stripe covers at a time: region `r` (plaintext offsets
/// `[r × LOCK_REGION, (r + 1) × LOCK_REGION)`) is guarded by stripe `r mod LOCK_STRIPES`. Two
/// overlapping ranges share a region, hence a stripe. Large enough that a 4 MiB write takes 64
/// stripes, not every one of them (per-sector stripes made every write of 128 KiB or more
/// exclude all others).
pub(crate) const LOCK_REGION: u64 = 64 << 10;

/// The stripes of every [`LOCK_REGION`] that `[start, end)` (plaintext bytes, `end > start`)
/// touches, ascending and without repeats: the order they are taken in (no deadlock).
pub(crate) fn stripes(start: u64, end: u64) -> Vec<usize> {
    let first = start / LOCK_REGION;
    let count = (end - 1) / LOCK_REGION - first + 1;
    let mut stripes: Vec<usize> = if count >= LOCK_STRIPES as u64 {
        (0..LOCK_STRIPES).collect()
    } else {
        (first..first + count)
            .map(|r| (r % LOCK_STRIPES as u64) as usize)
            .collect()
    };
    stripes.sort_unstable();
    stripes.dedup();
    stripes
}

/// [`LOCK_STRIPES`] mutexes, one per stripe.
pub(crate) struct RegionLocks(Box<[Mutex<()>]>);

impl RegionLocks {
    /// All stripes unlocked.
    pub(crate) fn new() -> RegionLocks {
        RegionLocks((0..LOCK_STRIPES).map(|_| Mutex::new(())).collect())
    }

    /// Lock the [`stripes`] of `[start, end)` (plaintext bytes, `end > start`), in order; held
    /// until the guards drop. A poisoned stripe is taken anyway (it guards no data).
    pub(crate) fn lock(&self, start: u64, end: u64) -> Vec<MutexGuard<'_, ()>> {
        stripes(start, end)
            .into_iter()
            .map(|i| self.0[i].lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_of_ranges() {
        let r = LOCK_REGION;
        let n = LOCK_STRIPES as u64;
        // (start, end, expected stripes)
        let cases: Vec<(u64, u64, Vec<usize>)> = vec![
            (0, 1, vec![0]),
            (0, r, vec![0]),
            (r - 1, r + 1, vec![0, 1]),
            (5 * r + 7, 7 * r, vec![5, 6]),
            // Region n wraps to stripe 0, and the order is ascending.
            ((n - 1) * r, (n + 1) * r, vec![0, n as usize - 1]),
            // A range over every region takes every stripe once.
            (0, n * r, (0..LOCK_STRIPES).collect()),
            (3, 5 * n * r, (0..LOCK_STRIPES).collect()),
        ];
        for (start, end, want) in cases {
            assert_eq!(stripes(start, end), want, "[{start}, {end})");
        }
    }

    #[test]
    fn overlapping_ranges_share_a_stripe() {
        let (a, b) = (stripes(100, 70_000), stripes(69_999, 200_000));
        assert!(a.iter().any(|s| b.contains(s)), "{a:?} {b:?}");
    }
}
