//! Reused READ/WRITE data buffers, so a request's buffer is neither zero-filled nor freshly
//! allocated (and faulted in) each time: the profile of issue 6 had 7–12 % of large-request
//! time in `memset` of buffers that were overwritten right away (`docs/performance.md`).
//!
//! One pool for the whole server, shared by every connection. A buffer goes back to the pool
//! when its request is done (WRITE payload written, READ reply sent) and is handed out again
//! for a request of exactly its length (clients use a handful of request sizes, so exact
//! matches are the rule and no buffer is larger than the request it serves). The pool keeps
//! at most [`POOL_MAX_BYTES`] of idle buffers, dropping the oldest beyond that, so it adds a
//! fixed amount to the server's memory whatever the load or the volume size.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

/// Most bytes of idle buffers the pool keeps (16 MiB: four 4 MiB requests, or 4096 of 4 KiB).
pub const POOL_MAX_BYTES: usize = 16 << 20;

/// The server-wide pool of idle buffers (each fully initialised, `len() == capacity` not
/// required; only `len()` counts).
#[derive(Default)]
pub struct BufferPool {
    inner: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Oldest first.
    bufs: VecDeque<Vec<u8>>,
    /// Sum of `len()` over `bufs`, bytes.
    bytes: usize,
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
            if let Some(i) = idle.bufs.iter().rposition(|b| b.len() == len) {
                let b = idle.bufs.remove(i).expect("index from rposition");
                idle.bytes -= len;
                return b;
            }
        }
        vec![0u8; len]
    }

    /// Return a buffer taken with [`take`](BufferPool::take) (any length; empty ones and ones
    /// over [`POOL_MAX_BYTES`] are dropped). Idle buffers beyond [`POOL_MAX_BYTES`] are
    /// freed, oldest first.
    pub fn give(&self, buf: Vec<u8>) {
        let len = buf.len();
        if len == 0 || len > POOL_MAX_BYTES {
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut idle = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            while idle.bytes + len > POOL_MAX_BYTES {
                let old = idle.bufs.pop_front().expect("bytes > 0 means a buffer");
                idle.bytes -= old.len();
                dropped.push(old);
            }
            idle.bytes += len;
            idle.bufs.push_back(buf);
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
}
