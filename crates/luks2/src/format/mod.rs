//! LUKS2 on-disk format: bytes ↔ types, no I/O and no keys (`format-spec.md`).
//!
//! [`header`] decodes and encodes the binary header, [`metadata`] the JSON objects; this module
//! validates a metadata copy against the profile nbdcrypt supports and yields the typed views the
//! upper layers use ([`DataSegment`], [`KeyslotProfile`], [`DigestProfile`]).

pub mod escape;
pub mod header;
pub mod metadata;
pub mod probe;
mod strict_json;
#[cfg(test)]
mod tests;

pub use escape::{escape_for_terminal, escape_lines_for_terminal, Printable};
use header::{BinaryHeader, BINARY_HEADER_SIZE};
use metadata::{Metadata, SegmentSize};

/// The only cipher of our profile, for the data segment and for keyslot areas.
pub const CIPHER: &str = "aes-xts-plain64";
/// The only AF stripe count of our profile.
pub const AF_STRIPES: u32 = 4000;
/// Size of the volume key we create, in bytes (AES-256-XTS).
pub const VOLUME_KEY_SIZE: usize = 64;
/// Token type of a recovery-key keyslot (`format-spec.md` §9.1): `{"type":
/// "nbdcrypt-recovery", "keyslots": ["N"], "recovery_id": "8 hex digits"}`.
pub const RECOVERY_TOKEN: &str = "nbdcrypt-recovery";
/// Token type of a keyslot unlocked through the key service (`format-spec.md` §9.2):
/// `{"type": "nbdcrypt-keyservice", "keyslots": ["N"], "urls": [...], "kek": NAME,
/// "kek_version": V, "blob": BASE64}`.
pub const KEYSERVICE_TOKEN: &str = "nbdcrypt-keyservice";
/// Largest Argon2 time cost a keyslot may ask for (2^24 passes); above it the slot is refused.
pub const ARGON2_MAX_TIME: u32 = 1 << 24;
/// Default metadata copy size (binary header + JSON area), bytes.
pub const DEFAULT_HDR_SIZE: u64 = 16 << 10;
/// Default offset of the data segment, bytes (the whole LUKS2 header with keyslots area).
pub const DEFAULT_DATA_OFFSET: u64 = 16 << 20;
/// Largest keyslots area (`config.keyslots_size`) a header may declare, bytes: cryptsetup's
/// `LUKS2_MAX_KEYSLOTS_SIZE` (128 MiB); a larger one is refused, as cryptsetup does.
pub const MAX_KEYSLOTS_SIZE: u64 = 128 << 20;
/// Alignment of `config.keyslots_size`, bytes (cryptsetup refuses a size not a multiple of 4 KiB).
pub const KEYSLOTS_SIZE_ALIGN: u64 = 4096;

/// Why metadata bytes were refused. One kind per failure class.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// No LUKS magic where a header must be.
    #[error("not a LUKS device (no LUKS2 header magic)")]
    NotLuks,
    /// Structurally damaged or inconsistent metadata.
    #[error("{0}")]
    Corrupt(String),
    /// Valid LUKS2, but outside the profile nbdcrypt supports; the message names the field.
    #[error("{0}")]
    Unsupported(String),
    /// A value we were asked to encode does not fit the format.
    #[error("{0}")]
    Invalid(String),
}

/// Decode the JSON area of a metadata copy (`hdr_size` − 4096 bytes). The JSON text must end
/// with a NUL inside the area (`format-spec.md` §3), be UTF-8, and name no object member twice
/// (a duplicate would mean different things to different parsers). Errors:
/// [`FormatError::Corrupt`].
pub fn decode_json_area(area: &[u8]) -> Result<Metadata, FormatError> {
    let end = area.iter().position(|&c| c == 0).ok_or_else(|| {
        FormatError::Corrupt("JSON metadata is not terminated within its area".into())
    })?;
    if let Some(dup) = strict_json::duplicate_member(&area[..end]) {
        return Err(FormatError::Corrupt(format!(
            "JSON metadata is ambiguous: {dup}"
        )));
    }
    serde_json::from_slice(&area[..end]).map_err(|e| {
        // serde quotes unknown names verbatim.
        let e = escape_for_terminal(&e.to_string()).into_owned();
        FormatError::Corrupt(format!("JSON metadata is not valid LUKS2 JSON: {e}"))
    })
}

/// Encode metadata as compact JSON padded with NULs to `json_size` bytes. Errors:
/// [`FormatError::Invalid`] when the JSON (plus its NUL) does not fit.
pub fn encode_json_area(md: &Metadata, json_size: u64) -> Result<Vec<u8>, FormatError> {
    let mut v = serde_json::to_vec(md).map_err(|e| FormatError::Invalid(e.to_string()))?;
    if v.len() as u64 >= json_size {
        return Err(FormatError::Invalid(format!(
            "JSON metadata of {} bytes does not fit the {json_size}-byte JSON area",
            v.len()
        )));
    }
    v.resize(json_size as usize, 0);
    Ok(v)
}

/// Decode and check one whole metadata copy (`hdr_size` bytes: binary header + JSON area) read
/// at byte offset `at`: magic, checksum, `hdr_offset` = `at`, JSON within its area, `json_size`
/// consistent, and the layout and profile checks of [`check_layout`]; so a copy failing any of
/// them counts as damaged and the other copy can be used. Errors: [`FormatError::NotLuks`], [`FormatError::Corrupt`],
/// [`FormatError::Unsupported`].
pub fn decode_copy(bytes: &[u8], at: u64) -> Result<(BinaryHeader, Metadata), FormatError> {
    let hdr = BinaryHeader::decode(bytes)?;
    if bytes.len() as u64 != hdr.hdr_size {
        return Err(FormatError::Corrupt(format!(
            "metadata copy is {} bytes, header says {}",
            bytes.len(),
            hdr.hdr_size
        )));
    }
    header::verify_checksum(bytes)?;
    if hdr.hdr_offset != at {
        return Err(FormatError::Corrupt(format!(
            "hdr_offset {} does not match the copy's position {at}",
            hdr.hdr_offset
        )));
    }
    let md = decode_json_area(&bytes[BINARY_HEADER_SIZE..])?;
    let json_size = hdr.hdr_size - BINARY_HEADER_SIZE as u64;
    if md.config.json_size != json_size {
        return Err(FormatError::Corrupt(format!(
            "config.json_size {} does not match the header's JSON area of {json_size} bytes",
            md.config.json_size
        )));
    }
    check_layout(&hdr, &md)?;
    Ok((hdr, md))
}

/// Encode one whole metadata copy (`hdr.hdr_size` bytes) with its checksum filled in.
/// Errors: [`FormatError::Invalid`] when a field or the JSON does not fit.
pub fn encode_copy(hdr: &BinaryHeader, md: &Metadata) -> Result<Vec<u8>, FormatError> {
    let mut out = hdr.encode()?;
    out.extend(encode_json_area(
        md,
        hdr.hdr_size - BINARY_HEADER_SIZE as u64,
    )?);
    header::seal(&mut out);
    Ok(out)
}

/// Bytes of anti-forensic material a keyslot holds: `key_size × stripes`, rounded up to whole
/// 512-byte sectors (`format-spec.md` §4).
pub fn af_material_len(key_size: u64, stripes: u64) -> u64 {
    (key_size * stripes).div_ceil(512) * 512
}

/// The data segment as nbdcrypt uses it (`format-spec.md` §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSegment {
    /// Byte offset of the first data sector in the image.
    pub offset: u64,
    /// Length of the exported plaintext in bytes; a multiple of `sector_size`.
    pub size: u64,
    /// Encryption sector size in bytes (512, 1024, 2048 or 4096).
    pub sector_size: u32,
}

/// A keyslot's KDF within our profile (hash is always sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KdfProfile {
    /// PBKDF2-HMAC-SHA256 (RFC 8018 §5.2).
    Pbkdf2 {
        /// Iteration count.
        iterations: u32,
        /// Salt bytes.
        salt: Vec<u8>,
    },
    /// Argon2 version 0x13 (RFC 9106).
    Argon2 {
        /// `true` for Argon2id, `false` for Argon2i.
        id: bool,
        /// Time cost (passes).
        time: u32,
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Parallelism (lanes).
        parallel: u32,
        /// Salt bytes.
        salt: Vec<u8>,
    },
}

/// A keyslot within our profile (`format-spec.md` §3.1, §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyslotProfile {
    /// Keyslot id.
    pub id: u32,
    /// Size of the stored key in bytes.
    pub key_size: usize,
    /// Byte offset of the keyslot area in the image.
    pub area_offset: u64,
    /// Byte length of the keyslot area.
    pub area_size: u64,
    /// Key size of the area cipher (aes-xts-plain64) in bytes: 32 or 64.
    pub area_key_size: usize,
    /// AF stripes (4000).
    pub stripes: u32,
    /// The KDF.
    pub kdf: KdfProfile,
    /// Priority: 0 ignore, 1 normal, 2 prefer.
    pub priority: i64,
}

/// The `pbkdf2` digest that verifies a candidate volume key (`format-spec.md` §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestProfile {
    /// Digest id.
    pub id: u32,
    /// PBKDF2-HMAC-SHA256 iterations.
    pub iterations: u32,
    /// Salt bytes.
    pub salt: Vec<u8>,
    /// Expected digest bytes (32).
    pub digest: Vec<u8>,
    /// Keyslot ids this digest covers.
    pub keyslots: Vec<u32>,
}

/// An [`FormatError::Unsupported`] whose message (which quotes header strings) is escaped
/// for a terminal.
fn unsupported(msg: String) -> FormatError {
    FormatError::Unsupported(escape_for_terminal(&msg).into_owned())
}

/// Check a decoded metadata copy on its own (`format-spec.md` §3.2, §3.4): no mandatory
/// requirements, a keyslots area of at most [`MAX_KEYSLOTS_SIZE`] bytes in whole 4 KiB units
/// (cryptsetup's limits, so no header makes a copy of the header area unbounded), keyslot areas inside the keyslots area, not overlapping and large enough for
/// their key material, exactly one `crypt` segment with our cipher, a supported sector size,
/// `iv_tweak` 0, sector-aligned and after the keyslots area; every keyslot and segment a
/// digest names exists (as cryptsetup requires).
///
/// Errors: [`FormatError::Corrupt`] for inconsistent layout, [`FormatError::Unsupported`] naming
/// the field outside the profile (e.g. `cipher serpent-xts-plain64 is not supported`).
pub fn check_layout(hdr: &BinaryHeader, md: &Metadata) -> Result<(), FormatError> {
    if let Some(req) = &md.config.requirements {
        let mandatory = req
            .get("mandatory")
            .and_then(|m| m.as_array())
            .is_some_and(|a| !a.is_empty());
        if mandatory {
            return Err(unsupported(format!(
                "config.requirements {req} is not supported"
            )));
        }
    }
    let ks_size = md.config.keyslots_size;
    if ks_size > MAX_KEYSLOTS_SIZE || !ks_size.is_multiple_of(KEYSLOTS_SIZE_ALIGN) {
        return Err(unsupported(format!(
            "config.keyslots_size {ks_size} is not supported (at most {MAX_KEYSLOTS_SIZE} bytes, a multiple of {KEYSLOTS_SIZE_ALIGN}, as cryptsetup requires)"
        )));
    }
    let ks_start = 2 * hdr.hdr_size;
    let ks_end = ks_start
        .checked_add(md.config.keyslots_size)
        .ok_or_else(|| FormatError::Corrupt("config.keyslots_size overflows".into()))?;
    let mut areas: Vec<(u64, u64, u32)> = Vec::new();
    for (id, ks) in &md.keyslots {
        let a = &ks.area;
        let end = a.offset.checked_add(a.size).ok_or_else(|| {
            FormatError::Corrupt(format!("keyslot {id} area offset + size overflows"))
        })?;
        if a.offset < ks_start || end > ks_end {
            return Err(FormatError::Corrupt(format!(
                "keyslot {id} area [{}, {end}) is outside the keyslots area [{ks_start}, {ks_end})",
                a.offset
            )));
        }
        if let Some(af) = &ks.af {
            let need = af_material_len(ks.key_size as u64, af.stripes as u64);
            if a.size < need {
                return Err(FormatError::Corrupt(format!(
                    "keyslot {id} area of {} bytes is smaller than its {need} bytes of key material",
                    a.size
                )));
            }
        }
        areas.push((a.offset, end, id.0));
    }
    areas.sort();
    for w in areas.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(FormatError::Corrupt(format!(
                "keyslot areas of keyslots {} and {} overlap",
                w[0].2, w[1].2
            )));
        }
    }
    if md.segments.len() != 1 {
        return Err(unsupported(format!(
            "{} segments are not supported (only one crypt segment)",
            md.segments.len()
        )));
    }
    let (sid, seg) = md.segments.iter().next().expect("one segment");
    if seg.kind != "crypt" {
        return Err(unsupported(format!(
            "segment {sid} type {} is not supported",
            seg.kind
        )));
    }
    if seg.encryption != CIPHER {
        return Err(unsupported(format!(
            "cipher {} is not supported",
            seg.encryption
        )));
    }
    if ![512, 1024, 2048, 4096].contains(&seg.sector_size) {
        return Err(unsupported(format!(
            "sector_size {} is not supported",
            seg.sector_size
        )));
    }
    if seg.iv_tweak != 0 {
        return Err(unsupported(format!(
            "segment iv_tweak {} is not supported",
            seg.iv_tweak
        )));
    }
    for key in ["integrity", "flags"] {
        if let Some(v) = seg.extra.get(key) {
            return Err(unsupported(format!("segment {key} {v} is not supported")));
        }
    }
    for (did, d) in &md.digests {
        // One KDF runs per listed slot: a slot listed thousands of times is a cost attack.
        if let Some(k) = first_duplicate(&d.keyslots) {
            return Err(FormatError::Corrupt(format!(
                "digest {did} names keyslot {k:?} more than once"
            )));
        }
        if let Some(s) = first_duplicate(&d.segments) {
            return Err(FormatError::Corrupt(format!(
                "digest {did} names segment {s:?} more than once"
            )));
        }
        if d.salt.is_empty() || d.salt.len() > MAX_DIGEST_SALT {
            return Err(FormatError::Corrupt(format!(
                "digest {did} salt is {} bytes, outside 1..={MAX_DIGEST_SALT}",
                d.salt.len()
            )));
        }
        if let Some(n) = hash_output_len(&d.hash).filter(|n| !digest_len_ok(*n, d.digest.len())) {
            return Err(digest_len_error(did, d.digest.len(), &d.hash, n));
        }
        for k in &d.keyslots {
            let exists = metadata::u64_string::parse(k)
                .ok()
                .and_then(|n| u32::try_from(n).ok())
                .is_some_and(|n| md.keyslots.contains_key(&metadata::Id(n)));
            if !exists {
                return Err(FormatError::Corrupt(format!(
                    "digest {did} names keyslot {k:?}, which does not exist"
                )));
            }
        }
        if let Some(s) = d.segments.iter().find(|s| s.as_str() != sid.to_string()) {
            return Err(FormatError::Corrupt(format!(
                "digest {did} names segment {s:?}, which does not exist"
            )));
        }
    }
    for (tid, t) in &md.tokens {
        let ids: Vec<String> = t["keyslots"]
            .as_array()
            .map(|a| a.iter().map(|v| v.to_string()).collect())
            .unwrap_or_default();
        if let Some(k) = first_duplicate(&ids) {
            return Err(FormatError::Corrupt(format!(
                "token {tid} names keyslot {} more than once",
                Printable(k)
            )));
        }
    }
    // Offset 0 is a detached header's data segment (cryptsetup `--header`): the data file
    // holds only ciphertext. Whether the header really is detached is the volume layer's
    // check (`volume::load_header` refuses offset 0 in an image that holds its header).
    if (seg.offset != 0 && seg.offset < ks_end) || seg.offset % seg.sector_size as u64 != 0 {
        return Err(FormatError::Corrupt(format!(
            "data segment offset {} overlaps the header or is not sector-aligned",
            seg.offset
        )));
    }
    Ok(())
}

/// The largest digest salt accepted, bytes (cryptsetup writes 32).
pub const MAX_DIGEST_SALT: usize = 256;

/// Length of a LUKS1 volume-key digest (`mkDigest`, LUKS_DIGESTSIZE in cryptsetup), bytes,
/// whatever its hash: `cryptsetup convert --type luks2` keeps it, so a LUKS2 digest converted
/// from LUKS1 is 20 bytes even over sha256.
pub const LUKS1_DIGEST_LEN: usize = 20;

/// Whether a digest value of `len` bytes is acceptable for a hash of `hash_len` output bytes:
/// the hash's full output, or LUKS1's 20 bytes (a converted volume). Anything shorter would
/// let wrong passphrases pass the check by chance (a 1-byte digest: one in 256).
fn digest_len_ok(hash_len: usize, len: usize) -> bool {
    len == hash_len || (len == LUKS1_DIGEST_LEN && hash_len > LUKS1_DIGEST_LEN)
}

fn digest_len_error(
    id: impl std::fmt::Display,
    len: usize,
    hash: &str,
    hash_len: usize,
) -> FormatError {
    FormatError::Corrupt(format!(
        "digest {id} value is {len} bytes, but a {} digest is {hash_len} bytes (or {LUKS1_DIGEST_LEN}, converted from LUKS1)",
        Printable(hash)
    ))
}

/// The output length of a digest hash LUKS2 headers name, bytes (`None`: unknown name, refused
/// later as unsupported where it matters).
fn hash_output_len(hash: &str) -> Option<usize> {
    match hash {
        "sha1" | "ripemd160" => Some(20),
        "sha224" | "sha3-224" => Some(28),
        "sha256" | "sha3-256" | "blake2s-256" | "sm3" => Some(32),
        "sha384" | "sha3-384" => Some(48),
        "sha512" | "sha3-512" | "blake2b-512" | "whirlpool" => Some(64),
        _ => None,
    }
}

/// The first value that occurs twice in `v` (`None`: all distinct).
fn first_duplicate<T: Ord>(v: &[T]) -> Option<&T> {
    let mut seen = std::collections::BTreeSet::new();
    v.iter().find(|x| !seen.insert(*x))
}

/// The data segment of metadata that passed [`check_layout`], against an image of `image_len`
/// bytes: a `dynamic` segment runs to the end of the image, rounded down to whole sectors.
///
/// Errors: [`FormatError::Corrupt`] when the segment does not lie inside the image.
pub fn data_segment(md: &Metadata, image_len: u64) -> Result<DataSegment, FormatError> {
    let seg = md
        .segments
        .values()
        .next()
        .ok_or_else(|| FormatError::Corrupt("no data segment".into()))?;
    let ss = seg.sector_size as u64;
    let size = match seg.size {
        SegmentSize::Dynamic => {
            if seg.offset > image_len {
                return Err(FormatError::Corrupt(format!(
                    "data segment offset {} is beyond the end of the image ({image_len} bytes)",
                    seg.offset
                )));
            }
            (image_len - seg.offset) / ss * ss
        }
        SegmentSize::Bytes(n) => {
            if n % ss != 0 || seg.offset.checked_add(n).is_none_or(|e| e > image_len) {
                return Err(FormatError::Corrupt(format!(
                    "data segment [{}, +{n}) is not inside the image ({image_len} bytes)",
                    seg.offset
                )));
            }
            n
        }
    };
    Ok(DataSegment {
        offset: seg.offset,
        size,
        sector_size: seg.sector_size,
    })
}

/// The digest bound to the data segment. Errors: [`FormatError::Corrupt`] when none exists,
/// [`FormatError::Unsupported`] for a digest type or hash outside the profile.
pub fn segment_digest(md: &Metadata) -> Result<DigestProfile, FormatError> {
    let sid = md
        .segments
        .keys()
        .next()
        .map(|k| k.to_string())
        .unwrap_or_default();
    let (id, d) = md
        .digests
        .iter()
        .find(|(_, d)| d.segments.contains(&sid))
        .ok_or_else(|| FormatError::Corrupt(format!("no digest covers segment {sid}")))?;
    if d.kind != "pbkdf2" {
        return Err(unsupported(format!(
            "digest {id} type {} is not supported",
            d.kind
        )));
    }
    if d.hash != "sha256" {
        return Err(unsupported(format!(
            "digest {id} hash {} is not supported",
            d.hash
        )));
    }
    if !digest_len_ok(32, d.digest.len()) {
        return Err(digest_len_error(id, d.digest.len(), &d.hash, 32));
    }
    let keyslots = d
        .keyslots
        .iter()
        .map(|k| {
            metadata::u64_string::parse(k)
                .ok()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| FormatError::Corrupt(format!("digest {id} names keyslot {k:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DigestProfile {
        id: id.0,
        iterations: d.iterations,
        salt: d.salt.clone(),
        digest: d.digest.clone(),
        keyslots,
    })
}

/// Check keyslot `id` against the profile (`format-spec.md` §3.1) and return its typed view.
/// Errors: [`FormatError::Unsupported`] naming the field (keyslot type, area cipher, AF, KDF),
/// [`FormatError::Corrupt`] for missing KDF members or an area too small for its material.
pub fn keyslot_profile(md: &Metadata, id: u32) -> Result<KeyslotProfile, FormatError> {
    let ks = md
        .keyslots
        .get(&metadata::Id(id))
        .ok_or_else(|| FormatError::Invalid(format!("keyslot {id} is not in use")))?;
    if ks.kind != "luks2" {
        return Err(unsupported(format!(
            "keyslot {id} type {} is not supported",
            ks.kind
        )));
    }
    let area_cipher = ks.area.encryption.as_deref().unwrap_or("(none)");
    if ks.area.kind != "raw" || area_cipher != CIPHER {
        return Err(unsupported(format!(
            "keyslot {id} area {} with cipher {area_cipher} is not supported",
            ks.area.kind
        )));
    }
    let area_key_size = ks.area.key_size.unwrap_or(0);
    if area_key_size != 32 && area_key_size != 64 {
        return Err(unsupported(format!(
            "keyslot {id} area key_size {area_key_size} is not supported"
        )));
    }
    let (Some(af), Some(kdf)) = (&ks.af, &ks.kdf) else {
        return Err(FormatError::Corrupt(format!(
            "keyslot {id} has no af or kdf object"
        )));
    };
    if af.kind != "luks1" || af.stripes != AF_STRIPES || af.hash != "sha256" {
        return Err(unsupported(format!(
            "keyslot {id} AF {}/{} stripes/{} is not supported",
            af.kind, af.stripes, af.hash
        )));
    }
    if ks.key_size as usize != VOLUME_KEY_SIZE {
        return Err(unsupported(format!(
            "keyslot {id} key_size {} is not supported",
            ks.key_size
        )));
    }
    let missing = |what: &str| FormatError::Corrupt(format!("keyslot {id} kdf has no {what}"));
    let kdf = match kdf.kind.as_str() {
        "pbkdf2" => {
            let hash = kdf.hash.as_deref().ok_or_else(|| missing("hash"))?;
            if hash != "sha256" {
                return Err(unsupported(format!(
                    "keyslot {id} pbkdf2 hash {hash} is not supported"
                )));
            }
            KdfProfile::Pbkdf2 {
                iterations: kdf.iterations.ok_or_else(|| missing("iterations"))?,
                salt: kdf.salt.clone(),
            }
        }
        "argon2i" | "argon2id" => KdfProfile::Argon2 {
            id: kdf.kind == "argon2id",
            time: match kdf.time.ok_or_else(|| missing("time"))? {
                t if t > ARGON2_MAX_TIME => {
                    return Err(unsupported(format!(
                    "keyslot {id} argon2 time cost {t} is above the maximum of {ARGON2_MAX_TIME}"
                )))
                }
                t => t,
            },
            memory_kib: kdf.memory.ok_or_else(|| missing("memory"))?,
            parallel: kdf.cpus.ok_or_else(|| missing("cpus"))?,
            salt: kdf.salt.clone(),
        },
        other => {
            return Err(unsupported(format!(
                "keyslot {id} kdf {other} is not supported"
            )))
        }
    };
    Ok(KeyslotProfile {
        id,
        key_size: ks.key_size as usize,
        area_offset: ks.area.offset,
        area_size: ks.area.size,
        area_key_size: area_key_size as usize,
        stripes: af.stripes,
        kdf,
        priority: ks.priority.unwrap_or(1),
    })
}
