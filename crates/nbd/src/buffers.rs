//! Reused READ/WRITE data buffers, so a request's buffer is neither zero-filled nor freshly
//! allocated (and faulted in) each time: a profile of large requests had 7–12 % of their
//! time in `memset` of buffers that were overwritten right away (`docs/performance.md`).
//!
//! One pool for the whole server, shared by every connection. A buffer goes back to the pool
//! when its request is done (WRITE payload written, READ reply sent) and is handed out again
//! for a request of exactly its length (clients use a handful of request sizes, so exact
//! matches are the rule and no buffer is larger than the request it serves). The pool keeps
//! at most [`POOL_MAX_BYTES`] of idle buffers, dropping the oldest beyond that, so it adds a
//! fixed amount to the server's memory whatever the load or the volume size.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

/// Most bytes of idle buffers the pool keeps (16 MiB: four 4 MiB requests, or 4096 of 4 KiB).
pub const POOL_MAX_BYTES: usize = 16 << 20;

/// The server-wide pool of idle buffers (each fully initialised; only `len()` counts, not
/// `capacity()`).
#[derive(Default)]
pub struct BufferPool {
    inner: Mutex<Idle>,
}

/// Idle buffers by exact length (size classes), so [`BufferPool::take`] is one hash lookup
/// whatever the number of idle buffers; eviction scans only the classes (a handful: one per
/// request size the clients use).
#[derive(Default)]
struct Idle {
    /// Length -> its idle buffers, oldest first, each with its return stamp. No empty class
    /// is kept.
    classes: HashMap<usize, VecDeque<(u64, Vec<u8>)>>,
    /// Sum of `len()` over all idle buffers, bytes.
    bytes: usize,
    /// Stamp of the next returned buffer (increasing: smaller is older).
    next: u64,
}

impl Idle {
    /// Drop the oldest idle buffer of any class; `None` if there is none.
    fn pop_oldest(&mut self) -> Option<Vec<u8>> {
        let (&len, _) = self
            .classes
            .iter()
            .min_by_key(|(_, q)| q.front().map_or(u64::MAX, |(stamp, _)| *stamp))?;
        let q = self.classes.get_mut(&len).expect("key from the map");
        let (_, old) = q.pop_front().expect("no empty class is kept");
        if q.is_empty() {
            self.classes.remove(&len);
        }
        self.bytes -= old.len();
        Some(old)
    }
}

impl BufferPool {
    /// The process-wide pool.
    pub fn global() -> &'static BufferPool {
        static POOL: OnceLock<BufferPool> = OnceLock::new();
        POOL.get_or_init(BufferPool::default)
    }

    /// A buffer of exactly `len` bytes with unspecified content (an idle one of that length,
    /// most recently returned first, or a new zeroed one).
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len > 0 {
            let mut idle = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(q) = idle.classes.get_mut(&len) {
                let (_, b) = q.pop_back().expect("no empty class is kept");
                if q.is_empty() {
                    idle.classes.remove(&len);
                }
                idle.bytes -= len;
                return b;
            }
        }
        vec![0u8; len]
    }

    /// Return a buffer taken with [`take`](BufferPool::take) (any length; empty ones and ones
    /// over [`POOL_MAX_BYTES`] are dropped). Idle buffers beyond [`POOL_MAX_BYTES`] are
    /// freed, oldest first (whatever their length).
    pub fn give(&self, buf: Vec<u8>) {
        let len = buf.len();
        if len == 0 || len > POOL_MAX_BYTES {
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut idle = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            while idle.bytes + len > POOL_MAX_BYTES {
                dropped.push(idle.pop_oldest().expect("bytes > 0 means a buffer"));
            }
            let stamp = idle.next;
            idle.next += 1;
            idle.bytes += len;
            idle.classes.entry(len).or_default().push_back((stamp, buf));
        }
        drop(dropped); // freed outside the lock
    }

    /// Bytes held idle.
    pub fn idle_bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_exact_length_and_caps_idle_bytes() {
        let pool = BufferPool::default();
        let mut a = pool.take(4096);
        a[0] = 7;
        pool.give(a);
        assert_eq!(pool.idle_bytes(), 4096);
        // A different length is not served from the 4 KiB buffer.
        assert_eq!(pool.take(8192).len(), 8192);
        let b = pool.take(4096);
        assert_eq!((b.len(), b[0]), (4096, 7), "the returned buffer is reused");
        assert_eq!(pool.idle_bytes(), 0);
        for _ in 0..5 {
            pool.give(vec![1u8; 4 << 20]);
        }
        assert_eq!(pool.idle_bytes(), POOL_MAX_BYTES);
        pool.give(vec![0u8; POOL_MAX_BYTES + 1]);
        assert_eq!(pool.idle_bytes(), POOL_MAX_BYTES);
        pool.give(Vec::new());
        assert_eq!(pool.take(0).len(), 0);
    }

    #[test]
    fn evicts_oldest_across_lengths() {
        let pool = BufferPool::default();
        pool.give(vec![7u8; 4096]); // oldest
        pool.give(vec![8u8; 8192]);
        for _ in 0..3 {
            pool.give(vec![1u8; 4 << 20]);
        }
        assert_eq!(pool.idle_bytes(), (12 << 20) + 4096 + 8192);
        // One more 4 MiB buffer does not fit: the 4 KiB one (oldest) goes, then the 8 KiB one.
        pool.give(vec![2u8; 4 << 20]);
        assert_eq!(pool.idle_bytes(), POOL_MAX_BYTES);
        assert_eq!(
            pool.take(4096)[0],
            0,
            "the 4 KiB buffer was dropped: a new zeroed one"
        );
        assert_eq!(pool.take(8192)[0], 0, "the 8 KiB buffer was dropped too");
        // Most recently returned first within a length.
        assert_eq!(pool.take(4 << 20)[0], 2);
        assert_eq!(pool.take(4 << 20)[0], 1);
        assert_eq!(pool.idle_bytes(), 8 << 20);
    }
}
