//! Cryptographic primitives for LUKS2 volumes (the bottom layer of nbdcrypt).
//!
//! This layer does no I/O and imports no other crate module: it takes plain
//! parameters (byte slices, counts, algorithm enums) and returns bytes.
//!
//! - [`secret`]: zeroizing secret containers ([`SecretBytes`], [`Passphrase`], [`VolumeKey`]).
//! - [`kdf`]: PBKDF2 (RFC 8018) and Argon2 (RFC 9106) key derivation ([`derive_key`]) and the
//!   cryptsetup-style cost benchmarks.
//! - [`xts`]: the `aes-xts-plain64` sector transform (IEEE 1619-2007), [`SectorCipher`].
//! - [`af`]: the LUKS anti-forensic splitter (LUKS1 spec §2.4).
//! - [`keyslot`]: LUKS2 `luks2` keyslot wrap/unwrap (LUKS2 spec §3.2, "Unlock algorithm").
//! - [`digest`]: LUKS2 `pbkdf2` volume-key digest (LUKS2 spec §3.3).

pub mod af;
pub mod digest;
pub mod kdf;
pub mod keyslot;
pub mod recovery;
pub mod secret;
pub mod xts;
#[cfg(target_arch = "x86_64")]
mod xts_ni;

pub use af::{af_merge, af_split};
pub use digest::{compute_digest, verify_digest};
pub use kdf::{argon2_derive, benchmark_argon2, benchmark_pbkdf2, derive_key};
pub use keyslot::{keyslot_material_len, unwrap_key, wrap_key, KeyslotParams};
pub use secret::{random_bytes, Passphrase, SecretBytes, VolumeKey};
pub use xts::SectorCipher;

/// Errors of the crypto layer. None of them carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A cipher key of this length (bytes) is not supported (XTS-AES takes 32 or 64 bytes).
    #[error("unsupported key size: {0} bytes")]
    UnsupportedKeySize(usize),
    /// A hash name (as written in LUKS2 JSON, e.g. `"sha1"`) that this layer does not implement.
    #[error("unsupported hash algorithm: {0:?}")]
    UnsupportedHash(String),
    /// A KDF name (as written in LUKS2 JSON) that this layer does not implement.
    #[error("unsupported KDF: {0:?}")]
    UnsupportedKdf(String),
    /// KDF or digest cost parameters out of range (iterations, memory, threads, salt, output length).
    #[error("invalid KDF parameters: {0}")]
    InvalidKdfParams(String),
    /// Invalid anti-forensic splitter parameters (zero stripes, empty key, size overflow).
    #[error("invalid AF splitter parameters: {0}")]
    InvalidAfParams(String),
    /// A key had a different length (bytes) than the keyslot parameters declare.
    #[error("key length mismatch: expected {expected} bytes, got {actual}")]
    KeyLengthMismatch {
        /// Length required by the parameters, in bytes.
        expected: usize,
        /// Length supplied, in bytes.
        actual: usize,
    },
    /// The keyslot area passed to unwrap is shorter (bytes) than the AF material it must hold.
    #[error("keyslot area too short: {actual} bytes, need {needed}")]
    AreaTooShort {
        /// Required length in bytes ([`keyslot_material_len`]).
        needed: usize,
        /// Supplied length in bytes.
        actual: usize,
    },
    /// Buffer length / sector size combination not usable by [`SectorCipher`].
    #[error("invalid sector layout: buffer of {len} bytes, sector size {sector_size} bytes")]
    InvalidSectorLayout {
        /// Buffer length in bytes.
        len: usize,
        /// Sector size in bytes.
        sector_size: usize,
    },
    /// The operating system random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// The KDF implementation failed at run time.
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// Argon2 could not allocate its memory cost (`memory_kib` KiB).
    #[error("Argon2 could not allocate {memory_kib} KiB")]
    OutOfMemory {
        /// The memory cost asked for, KiB.
        memory_kib: u32,
    },
}

/// Hash algorithms usable for PBKDF2, the AF splitter and the LUKS2 digest.
///
/// LUKS2 default (and the only one cryptsetup 2.6 writes by default) is `sha256`.
/// `sha512` is supported because it is cheap (same `sha2` crate). `sha1` (common in old LUKS1
/// headers) is not implemented: [`HashAlg::from_name`] returns [`CryptoError::UnsupportedHash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashAlg {
    /// SHA-256 (FIPS 180-4), 32-byte output.
    #[default]
    Sha256,
    /// SHA-512 (FIPS 180-4), 64-byte output.
    Sha512,
}

impl HashAlg {
    /// Parses a LUKS2/cryptsetup hash name (`"sha256"`, `"sha512"`; ASCII case-insensitive).
    ///
    /// # Errors
    /// [`CryptoError::UnsupportedHash`] naming the input for anything else (e.g. `"sha1"`).
    pub fn from_name(name: &str) -> Result<Self, CryptoError> {
        match name.to_ascii_lowercase().as_str() {
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            _ => Err(CryptoError::UnsupportedHash(name.to_string())),
        }
    }

    /// The name as written in LUKS2 JSON (`"sha256"`, `"sha512"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Output length of the hash in bytes (32 for SHA-256, 64 for SHA-512).
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }
}

/// Argon2 variant (RFC 9106 §3). Argon2d is not used by LUKS2 and not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Argon2Variant {
    /// Argon2i (data-independent memory access), LUKS2 name `"argon2i"`.
    Argon2i,
    /// Argon2id (hybrid), LUKS2 name `"argon2id"`, cryptsetup's default since 2.4.0.
    Argon2id,
}

impl Argon2Variant {
    /// Parses a LUKS2 KDF type name (`"argon2i"` or `"argon2id"`).
    ///
    /// # Errors
    /// [`CryptoError::UnsupportedKdf`] naming the input for anything else.
    pub fn from_name(name: &str) -> Result<Self, CryptoError> {
        match name {
            "argon2i" => Ok(Self::Argon2i),
            "argon2id" => Ok(Self::Argon2id),
            _ => Err(CryptoError::UnsupportedKdf(name.to_string())),
        }
    }

    /// The LUKS2 KDF type name (`"argon2i"` / `"argon2id"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Argon2i => "argon2i",
            Self::Argon2id => "argon2id",
        }
    }
}

/// Parameters of a password-based key derivation, as stored in a LUKS2 keyslot `kdf` object.
///
/// Salts are not secret and may be printed; cryptsetup uses 32-byte salts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KdfParams {
    /// PBKDF2-HMAC (RFC 8018 §5.2) with `hash` as the HMAC hash and `iterations` rounds.
    Pbkdf2 {
        /// HMAC hash (LUKS2 `kdf.hash`).
        hash: HashAlg,
        /// Iteration count (LUKS2 `kdf.iterations`), >= 1.
        iterations: u32,
        /// Salt bytes (LUKS2 `kdf.salt`, base64-decoded).
        salt: Vec<u8>,
    },
    /// Argon2 version 0x13 (RFC 9106) without secret or associated data.
    Argon2 {
        /// Argon2i or Argon2id (LUKS2 `kdf.type`).
        variant: Argon2Variant,
        /// Time cost, number of passes (LUKS2 `kdf.time`), >= 1.
        time: u32,
        /// Memory cost in KiB (LUKS2 `kdf.memory`), >= 8 * `parallel`.
        memory_kib: u32,
        /// Lanes / threads (LUKS2 `kdf.cpus`), >= 1.
        parallel: u32,
        /// Salt bytes (LUKS2 `kdf.salt`, base64-decoded), >= 8 bytes.
        salt: Vec<u8>,
    },
}
