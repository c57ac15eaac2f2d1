//! Creating a volume (cryptsetup `luksFormat`, `format-spec.md` §5): arguments checked and the
//! KDF chosen before the image is touched, a fresh volume key, keyslot 0 and its digest, the
//! keyslots area filled, then both header copies. Public as [`format`] and [`FormatOptions`]
//! (the command's name); the on-disk encoding itself is the `format` layer's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Map;

use crate::crypto::digest::compute_digest;
use crate::crypto::kdf::{benchmark_pbkdf2, PBKDF2_MIN_ITERATIONS};
use crate::crypto::keyslot::{keyslot_material_len, wrap_key, KeyslotParams};
use crate::crypto::secret::random_bytes;
use crate::crypto::{HashAlg, SecretBytes};
use crate::format::header::{BinaryHeader, Copy};
use crate::format::metadata::{Config, DigestEntry, Id, Metadata, Segment, SegmentSize};
use crate::format::{
    self, AF_STRIPES, CIPHER, DEFAULT_DATA_OFFSET, DEFAULT_HDR_SIZE, VOLUME_KEY_SIZE,
};

use super::error::VolumeError;
use super::header_io::{encode_copies, write_copies};
use super::image::{lock, Access};
use super::keyslot_create::{choose_kdf, keyslot_json, KdfChoice, SALT_LEN};
use super::store::{image_len, sync_step, write_step};

/// What `format` creates.
#[derive(Debug, Clone, Default)]
pub struct FormatOptions {
    /// Create or extend the image file to this many bytes (sparse); `None` uses the existing size.
    pub size: Option<u64>,
    /// Encryption sector size in bytes: 512 (default) or 4096.
    pub sector_size: u32,
    /// KDF and its cost for keyslot 0.
    pub kdf: KdfChoice,
    /// Optional label (at most 47 bytes).
    pub label: Option<String>,
    /// A detached header file (cryptsetup `--header`, `format-spec.md` §1.1): the header goes
    /// there (created, mode 0600, 16 MiB), and the image holds only the data segment, from
    /// offset 0.
    pub header: Option<PathBuf>,
}

/// Time to spend on the volume key digest's PBKDF2, ms (cryptsetup: 125 ms at `--iter-time` 2000).
const DIGEST_ITER_TIME_MS: u32 = 125;

/// A random (version 4) UUID in its text form, for a new volume's header.
fn random_uuid() -> Result<String, VolumeError> {
    let mut b = random_bytes(16)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Create a LUKS2 volume in the image at `path` (`format-spec.md` §5): a fresh 512-bit volume
/// key, keyslot 0 holding it under `passphrase`, a `pbkdf2` digest, one `aes-xts-plain64` crypt
/// segment at 16 MiB — or, with [`FormatOptions::header`], the header in that file and the
/// segment at offset 0 of the image (`format-spec.md` §1.1). The keyslots area is filled with random bytes and written first, then the
/// secondary and the primary header copy, each followed by `fdatasync`. The data area is not
/// touched. Returns the UUID.
///
/// Errors: [`VolumeError::InvalidArgument`] for a bad size, sector size or KDF cost;
/// [`VolumeError::Busy`] when the image is locked by another process; [`VolumeError::Device`]
/// when it cannot be created or opened; [`VolumeError::Io`] on write failures.
pub fn format(path: &Path, opts: &FormatOptions, passphrase: &[u8]) -> Result<String, VolumeError> {
    if ![512, 4096].contains(&opts.sector_size) {
        return Err(VolumeError::InvalidArgument(format!(
            "sector size {} is not supported (512 or 4096)",
            opts.sector_size
        )));
    }
    if let Some(label) = &opts.label {
        if label.len() > 47 || label.contains('\0') {
            return Err(VolumeError::InvalidArgument(format!(
                "label {label:?} is longer than 47 bytes"
            )));
        }
    }
    // Every argument is checked, and the KDF benchmarked, before the file is created or touched.
    let existing = match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(VolumeError::InvalidArgument(format!(
                "{} is not a regular file",
                path.display()
            )))
        }
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.size.is_some() => None,
        Err(e) => {
            return Err(VolumeError::Device {
                path: path.to_owned(),
                source: e,
            })
        }
    };
    let data_offset = match opts.header {
        Some(_) => 0,
        None => DEFAULT_DATA_OFFSET,
    };
    let min_len = data_offset + opts.sector_size as u64;
    let len = match (opts.size, existing) {
        (Some(size), Some(old)) if size < old => {
            return Err(VolumeError::InvalidArgument(format!(
                "--size {size} is smaller than the existing image ({old} bytes); refusing to shrink it"
            )))
        }
        (Some(size), _) => size,
        (None, old) => old.unwrap_or(0),
    };
    if len < min_len {
        let what = match opts.size {
            Some(_) => "--size".to_string(),
            None => format!("the existing image ({len} bytes)"),
        };
        return Err(VolumeError::InvalidArgument(match opts.header {
            None => format!(
                "{what} is too small: LUKS2 needs {DEFAULT_DATA_OFFSET} bytes of header plus at least one {}-byte sector (e.g. --size 17M)",
                opts.sector_size
            ),
            Some(_) => format!(
                "{what} is too small: the data file needs at least one {}-byte sector",
                opts.sector_size
            ),
        }));
    }
    let kdf = choose_kdf(&opts.kdf)?;

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(opts.size.is_some())
        .truncate(false)
        .open(path)
        .map_err(|e| VolumeError::Device {
            path: path.to_owned(),
            source: e,
        })?;
    lock(&file, path, Access::HeaderWrite)?;
    let file_len = image_len(&file, path)?;
    // The file the header goes to: the image itself, or the detached header file.
    let (hfile, hpath) = match &opts.header {
        None => (
            file.try_clone().map_err(|e| VolumeError::Device {
                path: path.to_owned(),
                source: e,
            })?,
            path,
        ),
        Some(h) => {
            use std::os::unix::fs::OpenOptionsExt;
            let hf = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(h)
                .map_err(|e| VolumeError::Device {
                    path: h.clone(),
                    source: e,
                })?;
            if !hf
                .metadata()
                .map_err(|e| VolumeError::Device {
                    path: h.clone(),
                    source: e,
                })?
                .is_file()
            {
                return Err(VolumeError::InvalidArgument(format!(
                    "{} is not a regular file",
                    h.display()
                )));
            }
            lock(&hf, h, Access::HeaderWrite)?;
            (hf, h.as_path())
        }
    };

    let vk = SecretBytes::random(VOLUME_KEY_SIZE)?;
    let digest_iterations = match opts.kdf.force_iterations {
        Some(_) => PBKDF2_MIN_ITERATIONS,
        None => {
            benchmark_pbkdf2(HashAlg::Sha256, DIGEST_ITER_TIME_MS, 32)?.max(PBKDF2_MIN_ITERATIONS)
        }
    };
    let digest_salt = random_bytes(SALT_LEN)?;
    let digest = compute_digest(
        HashAlg::Sha256,
        digest_iterations,
        &digest_salt,
        vk.expose(),
        32,
    )?;
    let params = KeyslotParams {
        kdf: kdf.clone(),
        area_key_size: VOLUME_KEY_SIZE,
        key_size: VOLUME_KEY_SIZE,
        stripes: AF_STRIPES,
        af_hash: HashAlg::Sha256,
    };
    let material = wrap_key(&params, passphrase, vk.expose())?;
    debug_assert_eq!(
        material.len(),
        keyslot_material_len(VOLUME_KEY_SIZE, AF_STRIPES)
    );
    let hdr_size = DEFAULT_HDR_SIZE;
    let ks_offset = 2 * hdr_size;
    let keyslots_size = DEFAULT_DATA_OFFSET - ks_offset;
    let area_size = (material.len() as u64).div_ceil(4096) * 4096;

    let md = Metadata {
        keyslots: BTreeMap::from([(Id(0), keyslot_json(&kdf, ks_offset, area_size))]),
        tokens: BTreeMap::new(),
        segments: BTreeMap::from([(
            Id(0),
            Segment {
                kind: "crypt".into(),
                offset: data_offset,
                size: SegmentSize::Dynamic,
                iv_tweak: 0,
                encryption: CIPHER.into(),
                sector_size: opts.sector_size,
                extra: Map::new(),
            },
        )]),
        digests: BTreeMap::from([(
            Id(0),
            DigestEntry {
                kind: "pbkdf2".into(),
                keyslots: vec!["0".into()],
                segments: vec!["0".into()],
                hash: "sha256".into(),
                iterations: digest_iterations,
                salt: digest_salt,
                digest,
                extra: Map::new(),
            },
        )]),
        config: Config {
            json_size: hdr_size - format::header::BINARY_HEADER_SIZE as u64,
            keyslots_size,
            flags: None,
            requirements: None,
            extra: Map::new(),
        },
        extra: Map::new(),
    };
    let base = BinaryHeader {
        copy: Copy::Primary,
        hdr_size,
        seqid: 1,
        label: opts.label.clone().unwrap_or_default(),
        checksum_alg: "sha256".into(),
        salt: [0; 64],
        uuid: random_uuid()?,
        subsystem: String::new(),
        hdr_offset: 0,
        csum: [0; 64],
    };
    let copies = encode_copies(hpath, &base, &md, 1)?;

    if len > file_len {
        file.set_len(len).map_err(|e| VolumeError::Io {
            op: "extend",
            path: path.to_owned(),
            offset: len,
            source: e,
        })?;
    }
    // Keyslots area: random fill (as cryptsetup), then the new slot's material.
    let mut fill = vec![0u8; 1 << 20];
    let mut at = ks_offset;
    while at < DEFAULT_DATA_OFFSET {
        let n = ((DEFAULT_DATA_OFFSET - at) as usize).min(fill.len());
        getrandom::fill(&mut fill[..n])
            .map_err(|e| VolumeError::Crypto(crate::crypto::CryptoError::Random(e.to_string())))?;
        write_step(&hfile, hpath, &fill[..n], at, "keyslots area fill")?;
        at += n as u64;
    }
    write_step(&hfile, hpath, &material, ks_offset, "keyslot area")?;
    sync_step(&hfile, hpath, "sync keyslots area")?;
    write_copies(&hfile, hpath, &copies)?;
    Ok(base.uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_v4_text() {
        let u = random_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
    }
}
