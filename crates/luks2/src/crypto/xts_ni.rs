//! Fused AES-256-XTS on x86_64 AES-NI: the tweak XORs are folded into the AES round
//! pipeline, so each 16-byte block is loaded once, XORed with its tweak and the first round
//! key, run through the rounds eight blocks at a time (independent blocks fill the AES unit's
//! pipeline), and stored once with the last round (its key XORed with the tweak), instead of
//! the three passes over memory of [`super::xts`]'s portable path (tweak XOR in, block cipher,
//! tweak XOR out).
//!
//! The thirteen middle rounds of each eight blocks are one `asm!` block (`rounds8!`, and
//! `rounds4y!` with VAES), so they stay in round-major order: LLVM's scheduler otherwise
//! regrouped them block by block, serialising each block's dependent AES instructions.
//!
//! Used only when the CPU has AES-NI (runtime detection: [`XtsNi::new`] returns `None`
//! otherwise), for AES-256 keys (64-byte XTS keys, LUKS2's default); with VAES + AVX2 (Intel
//! Ice Lake, AMD Zen 3 and later) in 256-bit registers, two blocks per instruction. The key schedule is the
//! standard FIPS-197 expansion through `AESKEYGENASSIST` (Intel's AES-NI white paper, §4.3);
//! decryption round keys are `AESIMC` of the encryption ones (the equivalent inverse cipher).
//! Checked against the IEEE 1619 vectors and OpenSSL by `crates/luks2/tests/it/crypto_kat.rs`,
//! as the portable path is.

use std::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_add_epi64, _mm_aesdeclast_si128, _mm_aesenc_si128,
    _mm_aesenclast_si128, _mm_aesimc_si128, _mm_aeskeygenassist_si128, _mm_and_si128,
    _mm_loadu_si128, _mm_set_epi32, _mm_set_epi64x, _mm_setzero_si128, _mm_shuffle_epi32,
    _mm_slli_si128, _mm_srai_epi32, _mm_storeu_si128, _mm_xor_si128,
};

use std::arch::x86_64::{
    __m256i, _mm256_add_epi64, _mm256_aesdeclast_epi128, _mm256_aesenclast_epi128,
    _mm256_and_si256, _mm256_broadcastsi128_si256, _mm256_loadu_si256, _mm256_set_epi32,
    _mm256_set_m128i, _mm256_shuffle_epi32, _mm256_srai_epi32, _mm256_storeu_si256,
    _mm256_xor_si256,
};

/// Blocks in flight through the rounds at once.
const LANES: usize = 8;

/// Expanded AES-256 keys of both XTS halves; wiped on drop.
pub struct XtsNi {
    /// key1 (data), encryption round keys.
    enc: [__m128i; 15],
    /// key1 (data), decryption round keys (equivalent inverse cipher order).
    dec: [__m128i; 15],
    /// key2 (tweak), encryption round keys.
    tweak: [__m128i; 15],
    /// The CPU has VAES and AVX2: two blocks per AES instruction.
    vaes: bool,
}

// SAFETY: plain data (vector registers' contents); no interior mutability.
unsafe impl Send for XtsNi {}
// SAFETY: as above; only read after construction.
unsafe impl Sync for XtsNi {}

impl Drop for XtsNi {
    fn drop(&mut self) {
        for k in self
            .enc
            .iter_mut()
            .chain(self.dec.iter_mut())
            .chain(self.tweak.iter_mut())
        {
            // SAFETY: `k` is a valid, aligned `__m128i`; volatile so the wipe is not elided.
            // SSE2 is part of the x86_64 baseline.
            unsafe { std::ptr::write_volatile(k, _mm_setzero_si128()) };
        }
    }
}

impl XtsNi {
    /// The fused cipher for a 64-byte XTS key (`key1 || key2`), or `None` if the CPU lacks
    /// AES-NI or the key is not 64 bytes. With VAES and AVX2 (checked at run time) two blocks
    /// go through each AES instruction. For testing and comparing the implementations, the
    /// environment variable `NBDCRYPT_XTS_IMPL` (read here, once per key) set to `portable`
    /// makes this `None`, and `aesni` disables the VAES path.
    pub fn new(key: &[u8]) -> Option<Box<XtsNi>> {
        let choice = std::env::var("NBDCRYPT_XTS_IMPL").unwrap_or_default();
        if key.len() != 64 || !std::arch::is_x86_feature_detected!("aes") || choice == "portable" {
            return None;
        }
        // SAFETY: AES-NI was detected just above.
        unsafe {
            let enc = expand256(&key[..32]);
            let tweak = expand256(&key[32..]);
            let mut dec = enc;
            dec[0] = enc[14];
            for i in 1..14 {
                dec[i] = _mm_aesimc_si128(enc[14 - i]);
            }
            dec[14] = enc[0];
            let vaes = std::arch::is_x86_feature_detected!("vaes")
                && std::arch::is_x86_feature_detected!("avx2")
                && choice != "aesni";
            Some(Box::new(XtsNi {
                enc,
                dec,
                tweak,
                vaes,
            }))
        }
    }

    /// XTS over whole sectors of `buf` (`sector_size` a multiple of 128 bytes), sector k's IV
    /// `first_iv + k * step` (512-byte units, `plain64`).
    pub fn apply(&self, buf: &mut [u8], sector_size: usize, first_iv: u64, step: u64, enc: bool) {
        debug_assert!(
            sector_size.is_multiple_of(16 * LANES) && buf.len().is_multiple_of(sector_size)
        );
        // SAFETY: `XtsNi` exists only when AES-NI was detected (`new`).
        unsafe {
            if self.vaes {
                xts_vaes(self, buf, sector_size, first_iv, step, enc)
            } else {
                xts(self, buf, sector_size, first_iv, step, enc)
            }
        }
    }
}

#[target_feature(enable = "aes")]
unsafe fn expand256(key: &[u8]) -> [__m128i; 15] {
    #[inline(always)]
    unsafe fn shift_xor(mut t: __m128i) -> __m128i {
        let mut u = _mm_slli_si128::<4>(t);
        t = _mm_xor_si128(t, u);
        u = _mm_slli_si128::<4>(u);
        t = _mm_xor_si128(t, u);
        u = _mm_slli_si128::<4>(u);
        _mm_xor_si128(t, u)
    }
    let mut k = [_mm_setzero_si128(); 15];
    let mut t1 = _mm_loadu_si128(key.as_ptr().cast());
    let mut t3 = _mm_loadu_si128(key[16..].as_ptr().cast());
    k[0] = t1;
    k[1] = t3;
    macro_rules! round {
        ($i:expr, $rcon:expr) => {
            let t2 = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(t3));
            t1 = _mm_xor_si128(shift_xor(t1), t2);
            k[$i] = t1;
            let t2 = _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(t1));
            t3 = _mm_xor_si128(shift_xor(t3), t2);
            k[$i + 1] = t3;
        };
    }
    round!(2, 0x01);
    round!(4, 0x02);
    round!(6, 0x04);
    round!(8, 0x08);
    round!(10, 0x10);
    round!(12, 0x20);
    let t2 = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<0x40>(t3));
    k[14] = _mm_xor_si128(shift_xor(t1), t2);
    k
}

/// × α in GF(2^128) (IEEE 1619 §5.2), branch-free.
#[inline(always)]
unsafe fn double(t: __m128i) -> __m128i {
    let signs = _mm_shuffle_epi32::<0x13>(_mm_srai_epi32::<31>(t));
    let carry = _mm_and_si128(signs, _mm_set_epi32(0, 1, 0, 0x87));
    _mm_xor_si128(_mm_add_epi64(t, t), carry)
}

/// Thirteen middle rounds (1..=13) of AES-256 on eight blocks at once, round after round,
/// with the round keys at `keys[1..14]`. In `asm!` so that the order stays round-major: from
/// intrinsics, LLVM's scheduler regrouped the rounds block after block (each block's 14
/// dependent AES instructions in a row, about 0.85 × OpenSSL's speed); here each round's eight
/// independent instructions are adjacent and keep both AES units busy.
macro_rules! rounds8 {
    ($op:literal, $x:ident, $keys:expr) => {
        std::arch::asm!(
            ".irp off, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208",
            "movdqu {k}, xmmword ptr [{keys} + \\off]",
            concat!($op, " {x0}, {k}"),
            concat!($op, " {x1}, {k}"),
            concat!($op, " {x2}, {k}"),
            concat!($op, " {x3}, {k}"),
            concat!($op, " {x4}, {k}"),
            concat!($op, " {x5}, {k}"),
            concat!($op, " {x6}, {k}"),
            concat!($op, " {x7}, {k}"),
            ".endr",
            keys = in(reg) $keys,
            k = out(xmm_reg) _,
            x0 = inout(xmm_reg) $x[0],
            x1 = inout(xmm_reg) $x[1],
            x2 = inout(xmm_reg) $x[2],
            x3 = inout(xmm_reg) $x[3],
            x4 = inout(xmm_reg) $x[4],
            x5 = inout(xmm_reg) $x[5],
            x6 = inout(xmm_reg) $x[6],
            x7 = inout(xmm_reg) $x[7],
            options(nostack, readonly, preserves_flags),
        )
    };
}

#[target_feature(enable = "aes")]
unsafe fn xts(c: &XtsNi, buf: &mut [u8], sector_size: usize, first_iv: u64, step: u64, enc: bool) {
    if enc {
        xts8::<true>(c, buf, sector_size, first_iv, step)
    } else {
        xts8::<false>(c, buf, sector_size, first_iv, step)
    }
}

/// [`xts`] for one direction.
#[target_feature(enable = "aes")]
unsafe fn xts8<const ENC: bool>(
    c: &XtsNi,
    buf: &mut [u8],
    sector_size: usize,
    first_iv: u64,
    step: u64,
) {
    let keys = if ENC { &c.enc } else { &c.dec };
    let (k0, k14) = (keys[0], keys[14]);
    let mask = _mm_set_epi32(0, 1, 0, 0x87);
    let mut iv = first_iv;
    // Sectors in groups of LANES: their IVs are encrypted together (8 independent blocks).
    for group in buf.chunks_mut(sector_size * LANES) {
        let n = group.len() / sector_size;
        let t = sector_tweaks(c, iv, step, n);
        iv = iv.wrapping_add(n as u64 * step);
        for (s, sector) in group.chunks_mut(sector_size).enumerate() {
            let mut tw = t[s];
            for lanes in sector.chunks_exact_mut(16 * LANES) {
                let p = lanes.as_mut_ptr();
                // × α (IEEE 1619 §5.2) eight times: `hi` holds the tweak's dwords 3 and 1 (bits
                // 96..127, 32..63); doubling it moves each next top bit of the two 64-bit
                // halves into a dword sign bit, exact for up to 31 steps (OpenSSL's trick).
                let mut hi = _mm_shuffle_epi32::<0x5f>(tw);
                let mut x = [_mm_setzero_si128(); LANES];
                let mut last = [_mm_setzero_si128(); LANES];
                for i in 0..LANES {
                    last[i] = _mm_xor_si128(tw, k14);
                    let b = _mm_loadu_si128(p.add(16 * i).cast());
                    x[i] = _mm_xor_si128(b, _mm_xor_si128(tw, k0));
                    let carry = _mm_and_si128(_mm_srai_epi32::<31>(hi), mask);
                    hi = _mm_add_epi32(hi, hi);
                    tw = _mm_xor_si128(_mm_add_epi64(tw, tw), carry);
                }
                if ENC {
                    rounds8!("aesenc", x, keys.as_ptr());
                    for i in 0..LANES {
                        let v = _mm_aesenclast_si128(x[i], last[i]);
                        _mm_storeu_si128(p.add(16 * i).cast(), v);
                    }
                } else {
                    rounds8!("aesdec", x, keys.as_ptr());
                    for i in 0..LANES {
                        let v = _mm_aesdeclast_si128(x[i], last[i]);
                        _mm_storeu_si128(p.add(16 * i).cast(), v);
                    }
                }
            }
        }
    }
}

/// × α on each 128-bit lane.
#[inline(always)]
unsafe fn double2(t: __m256i) -> __m256i {
    let signs = _mm256_shuffle_epi32::<0x13>(_mm256_srai_epi32::<31>(t));
    let carry = _mm256_and_si256(signs, _mm256_set_epi32(0, 1, 0, 0x87, 0, 1, 0, 0x87));
    _mm256_xor_si256(_mm256_add_epi64(t, t), carry)
}

/// The IVs of up to [`LANES`] sectors from `iv`, encrypted with the tweak key.
#[inline(always)]
unsafe fn sector_tweaks(c: &XtsNi, iv: u64, step: u64, n: usize) -> [__m128i; LANES] {
    let mut t = [_mm_setzero_si128(); LANES];
    for (j, tj) in t.iter_mut().enumerate().take(n) {
        *tj = _mm_xor_si128(
            _mm_set_epi64x(0, iv.wrapping_add(j as u64 * step) as i64),
            c.tweak[0],
        );
    }
    for r in &c.tweak[1..14] {
        for tj in t.iter_mut().take(n) {
            *tj = _mm_aesenc_si128(*tj, *r);
        }
    }
    for tj in t.iter_mut().take(n) {
        *tj = _mm_aesenclast_si128(*tj, c.tweak[14]);
    }
    t
}

/// [`rounds8!`] for four 256-bit registers (two blocks each), VAES; each round key is
/// broadcast from its 128-bit copy in `keys`.
macro_rules! rounds4y {
    ($op:literal, $x:ident, $keys:expr) => {
        std::arch::asm!(
            ".irp off, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208",
            "vbroadcasti128 {k}, xmmword ptr [{keys} + \\off]",
            concat!($op, " {x0}, {x0}, {k}"),
            concat!($op, " {x1}, {x1}, {k}"),
            concat!($op, " {x2}, {x2}, {k}"),
            concat!($op, " {x3}, {x3}, {k}"),
            ".endr",
            keys = in(reg) $keys,
            k = out(ymm_reg) _,
            x0 = inout(ymm_reg) $x[0],
            x1 = inout(ymm_reg) $x[1],
            x2 = inout(ymm_reg) $x[2],
            x3 = inout(ymm_reg) $x[3],
            options(nostack, readonly, preserves_flags),
        )
    };
}

/// [`xts`] with VAES: 8 blocks as 4 × 2 in 256-bit registers, each lane pair's tweaks
/// (t·α^2i, t·α^(2i+1)); the middle rounds in `asm!` ([`rounds4y!`]) as on AES-NI.
#[target_feature(enable = "aes,avx2,vaes")]
unsafe fn xts_vaes(
    c: &XtsNi,
    buf: &mut [u8],
    sector_size: usize,
    first_iv: u64,
    step: u64,
    enc: bool,
) {
    let k128 = if enc { &c.enc } else { &c.dec };
    // The first and last round keys, broadcast (the others are broadcast inside the rounds).
    let mut keys = [
        _mm256_broadcastsi128_si256(k128[0]),
        _mm256_broadcastsi128_si256(k128[14]),
    ];
    const PAIRS: usize = LANES / 2;
    let mut iv = first_iv;
    for group in buf.chunks_mut(sector_size * LANES) {
        let n = group.len() / sector_size;
        let t = sector_tweaks(c, iv, step, n);
        iv = iv.wrapping_add(n as u64 * step);
        for (s, sector) in group.chunks_mut(sector_size).enumerate() {
            let mut tt = _mm256_set_m128i(double(t[s]), t[s]);
            for lanes in sector.chunks_exact_mut(16 * LANES) {
                let p = lanes.as_mut_ptr();
                let mut tws = [tt; PAIRS];
                let mut x = [tt; PAIRS];
                for i in 0..PAIRS {
                    tws[i] = tt;
                    tt = double2(double2(tt));
                    let b = _mm256_loadu_si256(p.add(32 * i).cast());
                    x[i] = _mm256_xor_si256(b, _mm256_xor_si256(tws[i], keys[0]));
                }
                if enc {
                    rounds4y!("vaesenc", x, k128.as_ptr());
                    for i in 0..PAIRS {
                        let v = _mm256_aesenclast_epi128(x[i], _mm256_xor_si256(keys[1], tws[i]));
                        _mm256_storeu_si256(p.add(32 * i).cast(), v);
                    }
                } else {
                    rounds4y!("vaesdec", x, k128.as_ptr());
                    for i in 0..PAIRS {
                        let v = _mm256_aesdeclast_epi128(x[i], _mm256_xor_si256(keys[1], tws[i]));
                        _mm256_storeu_si256(p.add(32 * i).cast(), v);
                    }
                }
            }
        }
    }
    // The broadcast round keys are a copy of key material (maybe on the stack): wipe it.
    for k in keys.iter_mut() {
        std::ptr::write_volatile(k, _mm256_xor_si256(*k, *k));
    }
}
