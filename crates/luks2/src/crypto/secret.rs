//! Zeroizing containers for secrets (passphrases, volume keys, derived keys, AF material),
//! kept in locked memory (`mlock(2)`) where `RLIMIT_MEMLOCK` allows.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use zeroize::Zeroizing;

use super::CryptoError;

/// A heap buffer of secret bytes, wiped (zeroized) when dropped, its pages locked in RAM
/// ([`lock_region`]) while it lives so they are never written to swap.
///
/// `Debug` prints only the length: `SecretBytes([REDACTED; 64 bytes])`. Cloning makes a second
/// independently zeroized and locked copy. There is deliberately no `PartialEq`: compare
/// secrets with `subtle` in constant time.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl Clone for SecretBytes {
    fn clone(&self) -> Self {
        Self::new(self.0.to_vec())
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        let (ptr, cap) = (self.0.as_ptr(), self.0.capacity());
        // Wipe before the pages are unlocked (Zeroizing wipes again, harmlessly).
        zeroize::Zeroize::zeroize(&mut *self.0);
        unlock_region(ptr, cap);
    }
}

/// A user passphrase (arbitrary bytes, no encoding assumed, no trailing newline).
pub type Passphrase = SecretBytes;

/// A LUKS2 volume key (the segment encryption key; 64 bytes for aes-xts-plain64 with AES-256).
pub type VolumeKey = SecretBytes;

impl SecretBytes {
    /// Takes ownership of `v`; the bytes are wiped when the result is dropped.
    pub fn new(v: Vec<u8>) -> Self {
        lock_region(v.as_ptr(), v.capacity());
        Self(Zeroizing::new(v))
    }

    /// `len` bytes from the operating system CSPRNG (`getrandom`).
    ///
    /// # Errors
    /// [`CryptoError::Random`] if the OS generator fails.
    pub fn random(len: usize) -> Result<Self, CryptoError> {
        let mut s = Self::new(vec![0u8; len]);
        fill_random(s.expose_mut())?;
        Ok(s)
    }

    /// Borrows the secret bytes. Keep the borrow short; do not copy into non-zeroizing buffers.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Mutable access for in-place construction (e.g. a KDF writing its output).
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if the secret holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.0.len())
    }
}

/// Pages (by address) locked by [`lock_region`], with the number of live regions on each:
/// `mlock` does not nest, so a page is unlocked only when its last secret is gone.
static LOCKED_PAGES: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());
static MLOCK_WARNED: AtomicBool = AtomicBool::new(false);

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// The pages covering `len` bytes at `ptr`, as page addresses.
fn pages(ptr: *const u8, len: usize) -> impl Iterator<Item = usize> {
    let page = page_size();
    let start = ptr as usize / page * page;
    let end = if len == 0 {
        start
    } else {
        (ptr as usize).saturating_add(len).div_ceil(page) * page
    };
    (start..end).step_by(page)
}

/// Lock the pages holding `len` bytes at `ptr` in RAM (`mlock(2)`), so secrets are never
/// swapped out. When the lock is refused (usually `RLIMIT_MEMLOCK`, `ulimit -l`, too low) a
/// warning is logged once and the secret stays usable, unlocked. Pair with [`unlock_region`].
pub fn lock_region(ptr: *const u8, len: usize) {
    let page = page_size();
    let mut map = LOCKED_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    for p in pages(ptr, len) {
        let count = map.entry(p).or_insert(0);
        if *count == 0 {
            // SAFETY: the page is mapped (it holds part of a live allocation); mlock only
            // changes its residency.
            if unsafe { libc::mlock(p as *const libc::c_void, page) } != 0 {
                let err = std::io::Error::last_os_error();
                map.remove(&p);
                if !MLOCK_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "cannot lock key memory in RAM ({err}); secrets may be swapped out: raise \
                         the locked-memory limit (ulimit -l, LimitMEMLOCK=)"
                    );
                }
                continue;
            }
        }
        *count += 1;
    }
}

/// Undo [`lock_region`] for the same bytes: pages no other live secret uses are unlocked.
pub fn unlock_region(ptr: *const u8, len: usize) {
    let page = page_size();
    let mut map = LOCKED_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    for p in pages(ptr, len) {
        if let Some(count) = map.get_mut(&p) {
            *count -= 1;
            if *count == 0 {
                map.remove(&p);
                // SAFETY: as in lock_region; unlocking a page has no memory-safety effect.
                unsafe { libc::munlock(p as *const libc::c_void, page) };
            }
        }
    }
}

/// `len` random bytes from the OS CSPRNG (`getrandom`), for non-secret values such as salts.
///
/// # Errors
/// [`CryptoError::Random`] if the OS generator fails.
pub fn random_bytes(len: usize) -> Result<Vec<u8>, CryptoError> {
    let mut v = vec![0u8; len];
    fill_random(&mut v)?;
    Ok(v)
}

/// Fills `buf` from the OS CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// Make this process non-dumpable (`prctl(2)` `PR_SET_DUMPABLE` 0): no core file, and no
/// ptrace or `/proc/PID/mem` / `environ` access by other processes of the same user without
/// `CAP_SYS_PTRACE` (`docs/reliability.md`). Errors: the `prctl` error.
pub fn make_non_dumpable() -> std::io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Lock all of this process's memory, present and future, in RAM as it is touched
/// (`mlockall(2)` `MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT`), for a process whose secrets live
/// in buffers it does not control one by one (`nbdcrypt-keyd`: root key, KEKs). Done only
/// when nothing limits it — `RLIMIT_MEMLOCK` unlimited or `CAP_IPC_LOCK` held — because with
/// `MCL_FUTURE` under a finite limit later allocations would fail; otherwise a warning is
/// logged (the same words as [`lock_region`]'s) and nothing is locked. Returns whether the
/// memory is locked.
pub fn lock_all_memory() -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `lim` is.
    let unlimited = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0
        && lim.rlim_cur == libc::RLIM_INFINITY;
    let cap_ipc_lock = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
        .is_some_and(
            |caps| caps & (1 << 14) != 0, /* CAP_IPC_LOCK, capability.h */
        );
    let err = if unlimited || cap_ipc_lock {
        // SAFETY: mlockall takes flags only and changes page residency, not contents.
        let flags = libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT;
        if unsafe { libc::mlockall(flags) } == 0 {
            return true;
        }
        std::io::Error::last_os_error().to_string()
    } else {
        format!(
            "the locked-memory limit is {} KiB and CAP_IPC_LOCK is not held",
            lim.rlim_cur / 1024
        )
    };
    tracing::warn!(
        "cannot lock key memory in RAM ({err}); secrets may be swapped out: raise the \
         locked-memory limit to unlimited (ulimit -l unlimited, LimitMEMLOCK=infinity)"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::new(vec![0x41; 64]);
        assert_eq!(format!("{s:?}"), "SecretBytes([REDACTED; 64 bytes])");
    }

    /// Secrets' pages are locked while any secret on them lives (VmLck counts them).
    #[test]
    fn secrets_are_locked_while_alive() {
        let vm_lck = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find(|l| l.starts_with("VmLck:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .map(|n| n.parse::<u64>().unwrap())
                })
                .unwrap()
        };
        let before = vm_lck();
        let s = SecretBytes::new(vec![7u8; 64 << 10]);
        let during = vm_lck();
        drop(s);
        // Other tests may lock and unlock in parallel: compare with generous slack.
        assert!(during >= before + 60, "VmLck {before} -> {during} KiB");
    }

    #[test]
    fn random_has_len_and_differs() {
        let a = SecretBytes::random(32).unwrap();
        let b = SecretBytes::random(32).unwrap();
        assert_eq!(a.len(), 32);
        assert!(!a.is_empty());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(random_bytes(16).unwrap().len(), 16);
    }
}
