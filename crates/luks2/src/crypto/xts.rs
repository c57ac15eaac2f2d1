//! The `aes-xts-plain64` sector transform (IEEE 1619-2007 XTS-AES, cryptsetup IV semantics).

use std::fmt;

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128, Aes256, Block};

use super::CryptoError;

/// Unit of the `plain64` IV: the tweak counts 512-byte sectors whatever the sector size
/// (cryptsetup LUKS2 behaviour, no `iv_large_sectors`).
pub const IV_SECTOR_SIZE: usize = 512;

/// Buffers at least this long (bytes) are split across the calling thread and rayon's pool;
/// smaller ones are done on the calling thread alone. 1 MiB: a request of 1 MiB or more takes
/// about 0.2 ms of one core, so that a hand-off to another core (a wake-up, tens of µs) is
/// worth it when a core is idle; when none is (many requests in flight on a busy machine),
/// each split costs CPU time for nothing, and smaller requests are many (benches/e2e.sh,
/// docs/performance.md "End to end").
pub const PARALLEL_THRESHOLD: usize = 1024 * 1024;

/// Pieces of a split buffer are whole multiples of this many bytes (a multiple of every
/// sector size).
const PARALLEL_CHUNK: usize = 64 * 1024;

/// Sectors whose initial tweaks are encrypted in one batch. 60 sectors of 512 or 4096 bytes
/// are a whole number of [`WINDOW`]s, so only a buffer's last window can be short.
const TWEAK_BATCH: usize = 60;

/// Data blocks per block-cipher call: 8 × the `aes` crate's 30-block parallel batch (3840 bytes;
/// with its tweaks, well inside L1).
const WINDOW: usize = 240;

/// The two AES keys of XTS: `data` (key1) encrypts the data blocks, `tweak` (key2) the IVs.
struct Keys<C> {
    data: C,
    tweak: C,
}

impl<C: KeyInit> Keys<C> {
    fn new(key: &[u8]) -> Result<Box<Self>, CryptoError> {
        let (k1, k2) = key.split_at(key.len() / 2);
        let bad = |_| CryptoError::UnsupportedKeySize(key.len());
        let keys = Box::new(Keys {
            data: C::new_from_slice(k1).map_err(bad)?,
            tweak: C::new_from_slice(k2).map_err(bad)?,
        });
        super::secret::lock_region(std::ptr::from_ref(&*keys).cast(), size_of::<Self>());
        Ok(keys)
    }
}

impl<C> Drop for Keys<C> {
    fn drop(&mut self) {
        // The key schedules wipe themselves (the `aes` crate's `zeroize` feature) after this.
        super::secret::unlock_region(std::ptr::from_ref(self).cast(), size_of::<Self>());
    }
}

// Boxed: keeps the enum small and the key schedules at one heap address (no stray copies when
// the cipher value is moved).
enum Inner {
    Aes128(Box<Keys<Aes128>>),
    Aes256(Box<Keys<Aes256>>),
}
/// XTS-AES (IEEE 1619-2007) with a 64-byte key (AES-256-XTS) or 32-byte key (AES-128-XTS).
///
/// The key is `key1 || key2` (data key first, tweak key second), as in IEEE 1619, cryptsetup
/// and the Linux kernel. Each sector is one XTS data unit; its tweak is the `plain64` IV: the
/// sector's position counted in 512-byte units, as a 64-bit little-endian number zero-padded
/// to 16 bytes.
///
/// `Send + Sync`; `Debug` shows only the key size. Note: the expanded AES round keys are wiped on
/// drop only if the `aes` crate's `zeroize` feature is enabled.
pub struct SectorCipher {
    inner: Inner,
    /// The fused AES-NI path for AES-256 keys, when the CPU has AES-NI.
    #[cfg(target_arch = "x86_64")]
    ni: Option<Box<super::xts_ni::XtsNi>>,
}

impl fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = match self.inner {
            Inner::Aes128(_) => 256,
            Inner::Aes256(_) => 512,
        };
        write!(
            f,
            "SectorCipher {{ aes-xts-plain64, key_bits: {bits}, .. }}"
        )
    }
}

/// Checks that `len` bytes can be processed as whole sectors of `sector_size` bytes.
///
/// Valid: `sector_size` a power of two in 512..=4096 and `len` a multiple of it.
///
/// # Errors
/// [`CryptoError::InvalidSectorLayout`] otherwise.
pub fn check_sector_layout(len: usize, sector_size: usize) -> Result<(), CryptoError> {
    if sector_size.is_power_of_two()
        && (IV_SECTOR_SIZE..=4096).contains(&sector_size)
        && len.is_multiple_of(sector_size)
    {
        Ok(())
    } else {
        Err(CryptoError::InvalidSectorLayout { len, sector_size })
    }
}

impl SectorCipher {
    /// Builds the cipher from `key1 || key2`: 64 bytes (AES-256-XTS) or 32 bytes (AES-128-XTS).
    ///
    /// # Errors
    /// [`CryptoError::UnsupportedKeySize`] for any other key length.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let inner = match key.len() {
            64 => Inner::Aes256(Keys::new(key)?),
            32 => Inner::Aes128(Keys::new(key)?),
            n => return Err(CryptoError::UnsupportedKeySize(n)),
        };
        Ok(Self {
            inner,
            #[cfg(target_arch = "x86_64")]
            ni: super::xts_ni::XtsNi::new(key),
        })
    }

    /// Key length in bytes (32 or 64).
    pub fn key_len(&self) -> usize {
        match self.inner {
            Inner::Aes128(_) => 32,
            Inner::Aes256(_) => 64,
        }
    }

    /// Encrypts `buf` in place as consecutive sectors of `sector_size` bytes.
    ///
    /// The k-th sector (k from 0) is one XTS data unit with tweak
    /// `first_iv + k * (sector_size / 512)` (128-bit little-endian, i.e. `plain64`). `first_iv` is
    /// therefore the position of `buf` relative to the segment start in 512-byte units, also for
    /// 4096-byte sectors (luks2-facts 9.5).
    ///
    /// # Panics
    /// If `sector_size` is not a power of two in 512..=4096 or `buf.len()` is not a multiple of
    /// it (a caller bug; use [`check_sector_layout`] to validate untrusted sizes first).
    pub fn encrypt(&self, buf: &mut [u8], sector_size: usize, first_iv: u64) {
        self.apply(buf, sector_size, first_iv, true);
    }

    /// Decrypts `buf` in place; exact inverse of [`SectorCipher::encrypt`] with the same
    /// `sector_size` (bytes) and `first_iv` (512-byte units).
    ///
    /// # Panics
    /// As [`SectorCipher::encrypt`].
    pub fn decrypt(&self, buf: &mut [u8], sector_size: usize, first_iv: u64) {
        self.apply(buf, sector_size, first_iv, false);
    }

    fn apply(&self, buf: &mut [u8], sector_size: usize, first_iv: u64, encrypt: bool) {
        if let Err(e) = check_sector_layout(buf.len(), sector_size) {
            panic!("SectorCipher: {e}");
        }
        let step = (sector_size / IV_SECTOR_SIZE) as u64;
        #[cfg(target_arch = "x86_64")]
        if let Some(ni) = self.ni.as_deref() {
            let run = |chunk: &mut [u8], iv: u64| ni.apply(chunk, sector_size, iv, step, encrypt);
            return split(buf, first_iv, run);
        }
        let run = |chunk: &mut [u8], iv: u64| match &self.inner {
            Inner::Aes128(k) => xts_sectors(k, chunk, sector_size, iv, step, encrypt),
            Inner::Aes256(k) => xts_sectors(k, chunk, sector_size, iv, step, encrypt),
        };
        split(buf, first_iv, run);
    }
}

/// `run(buf, first_iv)` on this thread for buffers shorter than [`PARALLEL_THRESHOLD`] bytes;
/// longer ones are cut into one piece per thread of rayon's pool (whole multiples of
/// [`PARALLEL_CHUNK`] bytes, each with its own first IV): the calling thread runs the first
/// piece itself while the pool's threads take the others, so a request wakes one thread per
/// extra piece and no more.
fn split(buf: &mut [u8], first_iv: u64, run: impl Fn(&mut [u8], u64) + Sync) {
    if buf.len() < PARALLEL_THRESHOLD {
        return run(buf, first_iv);
    }
    let n = rayon::current_num_threads().max(1);
    let piece = buf.len().div_ceil(n).div_ceil(PARALLEL_CHUNK) * PARALLEL_CHUNK;
    let ivs = (piece / IV_SECTOR_SIZE) as u64;
    let run = &run;
    rayon::in_place_scope(|scope| {
        let mut pieces = buf.chunks_mut(piece).enumerate();
        let first = pieces.next();
        for (i, p) in pieces {
            scope.spawn(move |_| run(p, first_iv.wrapping_add(i as u64 * ivs)));
        }
        if let Some((_, p)) = first {
            run(p, first_iv);
        }
    });
}

/// XTS over whole sectors of `buf` (IEEE 1619-2007 §5.3.1/§5.4.1 without ciphertext stealing:
/// sectors are multiples of 16 bytes). Sector k's IV is `first_iv + k * step` (512-byte units).
///
/// Batched for speed: the IVs of [`TWEAK_BATCH`] sectors are encrypted in one call; then the
/// data blocks go through the block cipher [`WINDOW`] blocks per call, across sector
/// boundaries (the `aes` crate pipelines whole multiples of its 30-block AES-NI/VAES batch),
/// between two XOR passes with each block's tweak ([`whiten`]).
fn xts_sectors<C>(
    keys: &Keys<C>,
    buf: &mut [u8],
    sector_size: usize,
    first_iv: u64,
    step: u64,
    encrypt: bool,
) where
    C: BlockSizeUser<BlockSize = U16> + BlockCipherEncrypt + BlockCipherDecrypt,
{
    let per_sector = sector_size / 16;
    let mut sector_tweaks = [Block::default(); TWEAK_BATCH];
    let mut block_tweaks = [whiten::Tweak::default(); WINDOW];
    let mut iv = first_iv;
    for batch in buf.chunks_mut(sector_size * TWEAK_BATCH) {
        let n = batch.len() / sector_size;
        for t in &mut sector_tweaks[..n] {
            // plain64: the IV as 64-bit little-endian, zero-padded to 16 bytes.
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&iv.to_le_bytes());
            *t = Array::from(b);
            iv = iv.wrapping_add(step);
        }
        keys.tweak.encrypt_blocks(&mut sector_tweaks[..n]);
        let (blocks, _) = Array::<u8, U16>::slice_as_chunks_mut(batch);
        let mut t = whiten::Tweak::default();
        for (w, window) in blocks.chunks_mut(WINDOW).enumerate() {
            let bt = &mut block_tweaks[..window.len()];
            let mut g = w * WINDOW;
            // Runs of blocks within one sector: the tweak restarts at each sector boundary.
            let mut i = 0;
            while i < window.len() {
                if g.is_multiple_of(per_sector) {
                    t = whiten::Tweak::load(&sector_tweaks[g / per_sector]);
                }
                let run = (per_sector - g % per_sector).min(window.len() - i);
                t = whiten::xor_in(&mut window[i..i + run], &mut bt[i..i + run], t);
                i += run;
                g += run;
            }
            if encrypt {
                keys.data.encrypt_blocks(window);
            } else {
                keys.data.decrypt_blocks(window);
            }
            whiten::xor_out(window, bt);
        }
    }
}

/// The XTS tweak arithmetic and the XOR passes ("whitening") around the block cipher.
///
/// A block's tweak is the sector's encrypted IV multiplied by α^j (j = block index in the
/// sector) in GF(2^128), IEEE 1619-2007 §5.2: the 16 bytes read as a little-endian integer,
/// shifted left one bit, reduced by x^128 = x^7 + x^2 + x + 1 (0x87). Branch-free, so timing
/// does not depend on tweak values. On x86_64 it uses SSE2 (always present there); elsewhere
/// `u128` arithmetic. Both are checked by the IEEE 1619 vectors and the OpenSSL differential
/// tests.
mod whiten {
    use aes::Block;

    #[cfg(target_arch = "x86_64")]
    mod imp {
        use aes::Block;
        use std::arch::x86_64::{
            __m128i, _mm_add_epi64, _mm_and_si128, _mm_loadu_si128, _mm_set_epi32,
            _mm_setzero_si128, _mm_shuffle_epi32, _mm_srai_epi32, _mm_storeu_si128, _mm_xor_si128,
        };

        /// One tweak in an SSE register.
        #[derive(Clone, Copy)]
        pub struct Tweak(__m128i);

        impl Default for Tweak {
            fn default() -> Self {
                // SAFETY: SSE2 is part of the x86_64 baseline (every x86_64 CPU has it).
                Tweak(unsafe { _mm_setzero_si128() })
            }
        }

        #[inline(always)]
        fn load(b: &Block) -> __m128i {
            // SAFETY: `Block` is 16 initialised bytes; `loadu` has no alignment requirement;
            // SSE2 is part of the x86_64 baseline.
            unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
        }

        #[inline(always)]
        fn store(b: &mut Block, v: __m128i) {
            // SAFETY: `Block` is 16 writable bytes; `storeu` has no alignment requirement;
            // SSE2 is part of the x86_64 baseline.
            unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) }
        }

        impl Tweak {
            #[inline(always)]
            pub fn load(b: &Block) -> Tweak {
                Tweak(load(b))
            }

            /// × α: each 64-bit half shifted left by one (`paddq`), the bits shifted out
            /// (bit 63 into bit 64, bit 127 reduced to 0x87) put back from the sign masks.
            #[inline(always)]
            fn double(self) -> Tweak {
                // SAFETY: SSE2 is part of the x86_64 baseline.
                unsafe {
                    let signs = _mm_shuffle_epi32::<0x13>(_mm_srai_epi32::<31>(self.0));
                    let carry = _mm_and_si128(signs, _mm_set_epi32(0, 1, 0, 0x87));
                    Tweak(_mm_xor_si128(_mm_add_epi64(self.0, self.0), carry))
                }
            }
        }

        /// XOR `blocks` with consecutive tweaks starting at `t`, recording them in `saved`;
        /// returns the tweak of the block after the last.
        #[inline(always)]
        pub fn xor_in(blocks: &mut [Block], saved: &mut [Tweak], mut t: Tweak) -> Tweak {
            for (b, s) in blocks.iter_mut().zip(saved.iter_mut()) {
                *s = t;
                // SAFETY: SSE2 is part of the x86_64 baseline.
                store(b, unsafe { _mm_xor_si128(load(b), t.0) });
                t = t.double();
            }
            t
        }

        /// XOR `blocks` with the tweaks recorded by [`xor_in`].
        #[inline(always)]
        pub fn xor_out(blocks: &mut [Block], saved: &[Tweak]) {
            for (b, s) in blocks.iter_mut().zip(saved.iter()) {
                // SAFETY: SSE2 is part of the x86_64 baseline.
                store(b, unsafe { _mm_xor_si128(load(b), s.0) });
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    mod imp {
        use aes::Block;

        /// One tweak as a little-endian integer.
        #[derive(Clone, Copy, Default)]
        pub struct Tweak(u128);

        impl Tweak {
            #[inline(always)]
            pub fn load(b: &Block) -> Tweak {
                Tweak(u128::from_le_bytes((*b).into()))
            }

            /// × α.
            #[inline(always)]
            fn double(self) -> Tweak {
                Tweak((self.0 << 1) ^ ((self.0 >> 127) * 0x87))
            }
        }

        #[inline(always)]
        fn xor(b: &mut Block, t: u128) {
            *b = (u128::from_le_bytes((*b).into()) ^ t).to_le_bytes().into();
        }

        /// XOR `blocks` with consecutive tweaks starting at `t`, recording them in `saved`;
        /// returns the tweak of the block after the last.
        #[inline(always)]
        pub fn xor_in(blocks: &mut [Block], saved: &mut [Tweak], mut t: Tweak) -> Tweak {
            for (b, s) in blocks.iter_mut().zip(saved.iter_mut()) {
                *s = t;
                xor(b, t.0);
                t = t.double();
            }
            t
        }

        /// XOR `blocks` with the tweaks recorded by [`xor_in`].
        #[inline(always)]
        pub fn xor_out(blocks: &mut [Block], saved: &[Tweak]) {
            for (b, s) in blocks.iter_mut().zip(saved.iter()) {
                xor(b, s.0);
            }
        }
    }

    pub use imp::{xor_in, xor_out, Tweak};

    /// Unused-import guard: `Block` is the unit both implementations work on.
    const _: fn(&Block) -> Tweak = Tweak::load;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn is_send_sync() {
        assert_send_sync::<SectorCipher>();
    }

    #[test]
    fn key_sizes() {
        assert!(SectorCipher::new(&[1; 64]).is_ok());
        assert!(SectorCipher::new(&[1; 32]).is_ok());
        assert!(matches!(
            SectorCipher::new(&[1; 48]),
            Err(CryptoError::UnsupportedKeySize(48))
        ));
    }

    #[test]
    fn layout_checks() {
        assert!(check_sector_layout(4096, 512).is_ok());
        assert!(check_sector_layout(8192, 4096).is_ok());
        assert!(check_sector_layout(0, 1024).is_ok());
        assert!(check_sector_layout(4096, 256).is_err());
        assert!(check_sector_layout(4096, 8192).is_err());
        assert!(check_sector_layout(1000, 512).is_err());
        assert!(check_sector_layout(3072, 3072).is_err());
    }

    #[test]
    fn debug_hides_key() {
        let c = SectorCipher::new(&[0xAB; 64]).unwrap();
        let s = format!("{c:?}");
        assert!(
            !s.contains("171") && !s.to_lowercase().contains("ab"),
            "{s}"
        );
        assert!(s.contains("512"));
    }

    /// A 4096-byte sector at IV n equals nothing else than one data unit with tweak n, and the
    /// next 4096-byte sector uses tweak n + 8.
    #[test]
    fn large_sector_iv_steps_by_eight() {
        let c = SectorCipher::new(&[7; 64]).unwrap();
        let pt: Vec<u8> = (0..8192u32).map(|i| (i * 31) as u8).collect();
        let mut whole = pt.clone();
        c.encrypt(&mut whole, 4096, 16);
        let mut second = pt[4096..].to_vec();
        c.encrypt(&mut second, 4096, 24);
        assert_eq!(&whole[4096..], &second[..]);
        c.decrypt(&mut whole, 4096, 16);
        assert_eq!(whole, pt);
    }

    #[test]
    #[should_panic(expected = "invalid sector layout")]
    fn misaligned_panics() {
        let c = SectorCipher::new(&[7; 64]).unwrap();
        let mut b = vec![0u8; 700];
        c.encrypt(&mut b, 512, 0);
    }
}
