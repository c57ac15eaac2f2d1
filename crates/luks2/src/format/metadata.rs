//! The LUKS2 JSON metadata (`format-spec.md` §3, LUKS2 on-disk format §3). Types mirror the JSON
//! objects; 64-bit numbers are decimal strings and binary values base64, as cryptsetup writes
//! them. Members we do not interpret are kept in `extra` so a rewrite preserves them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The whole JSON object of a metadata copy. Map keys are the object ids (`"0"`, `"1"`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Keyslots by id.
    pub keyslots: BTreeMap<Id, Keyslot>,
    /// Tokens by id, kept as JSON (no token type is interpreted yet).
    pub tokens: BTreeMap<Id, Value>,
    /// Segments by id.
    pub segments: BTreeMap<Id, Segment>,
    /// Digests by id.
    pub digests: BTreeMap<Id, DigestEntry>,
    /// The `config` object.
    pub config: Config,
    /// Top-level members we do not know, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The id of a keyslot, token, segment or digest: a small number, written as a JSON object key
/// (a decimal string). Ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub u32);

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let n = u64_string::parse(&s).map_err(serde::de::Error::custom)?;
        // "0" and "00" would be two JSON members but one id: only the canonical form is taken.
        if s.len() > 1 && s.starts_with('0') {
            return Err(serde::de::Error::custom(format!(
                "object id {s:?} is not in canonical form"
            )));
        }
        u32::try_from(n)
            .map(Id)
            .map_err(|_| serde::de::Error::custom(format!("object id {s} is too large")))
    }
}

/// A keyslot object (`format-spec.md` §3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Keyslot {
    /// Keyslot type; we support `luks2`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in bytes of the key this slot stores (64 for our volume key).
    pub key_size: u32,
    /// Anti-forensic splitter parameters (absent in some keyslot types, e.g. `reencrypt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub af: Option<Af>,
    /// Where the keyslot's bytes live.
    pub area: Area,
    /// How the passphrase becomes the area key (absent in some keyslot types).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<Kdf>,
    /// Optional priority (0 ignore, 1 normal, 2 prefer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Members we do not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `af` object of a keyslot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Af {
    /// AF type; we support `luks1`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Number of stripes; we support 4000.
    pub stripes: u32,
    /// Diffusion hash; we support `sha256`.
    pub hash: String,
    /// Members we do not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `area` object of a keyslot: a byte range of the keyslots area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Area {
    /// Area type; we support `raw`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Absolute byte offset in the image.
    #[serde(with = "u64_string")]
    pub offset: u64,
    /// Length in bytes.
    #[serde(with = "u64_string")]
    pub size: u64,
    /// Cipher of the area; we support `aes-xts-plain64` (absent for non-`raw` areas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// Key size of that cipher in bytes (64 = AES-256-XTS, 32 = AES-128-XTS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_size: Option<u32>,
    /// Members we do not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `kdf` object of a keyslot. Which members are present depends on `kind`: `pbkdf2` has
/// `hash` and `iterations`, `argon2i`/`argon2id` have `time`, `memory` (KiB) and `cpus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kdf {
    /// `pbkdf2`, `argon2i` or `argon2id`.
    #[serde(rename = "type")]
    pub kind: String,
    /// PBKDF2 hash name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// PBKDF2 iteration count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u32>,
    /// Argon2 time cost (passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u32>,
    /// Argon2 memory cost in KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// Argon2 parallelism (lanes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Salt (base64 in JSON; 32 bytes as cryptsetup writes).
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    /// Members we do not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A segment object (`format-spec.md` §3.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Segment type; we support `crypt`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Byte offset of the data in the image.
    #[serde(with = "u64_string")]
    pub offset: u64,
    /// `dynamic` (to the end of the image) or a length in bytes.
    pub size: SegmentSize,
    /// IV offset in 512-byte sectors; we support `0`.
    #[serde(with = "u64_string")]
    pub iv_tweak: u64,
    /// Cipher; we support `aes-xts-plain64`.
    pub encryption: String,
    /// Encryption sector size in bytes: 512, 1024, 2048 or 4096.
    pub sector_size: u32,
    /// Members we do not interpret (an `integrity` or `flags` member is refused by validation).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `size` member of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentSize {
    /// `"dynamic"`: from the offset to the end of the image.
    Dynamic,
    /// A fixed length in bytes.
    Bytes(u64),
}

impl Serialize for SegmentSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SegmentSize::Dynamic => s.serialize_str("dynamic"),
            SegmentSize::Bytes(n) => s.serialize_str(&n.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for SegmentSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "dynamic" {
            return Ok(SegmentSize::Dynamic);
        }
        u64_string::parse(&s)
            .map(SegmentSize::Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// A digest object (`format-spec.md` §3.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestEntry {
    /// Digest type; we support `pbkdf2`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Ids of the keyslots whose key this digest verifies, as strings.
    pub keyslots: Vec<String>,
    /// Ids of the segments that key encrypts, as strings.
    pub segments: Vec<String>,
    /// PBKDF2 hash name.
    pub hash: String,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Salt (32 bytes).
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    /// The digest value (32 bytes for sha256).
    #[serde(with = "b64")]
    pub digest: Vec<u8>,
    /// Members we do not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `config` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Size of the JSON area in bytes (`hdr_size` − 4096).
    #[serde(with = "u64_string")]
    pub json_size: u64,
    /// Size of the keyslots area in bytes.
    #[serde(with = "u64_string")]
    pub keyslots_size: u64,
    /// Persistent activation flags (e.g. `allow-discards`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    /// Requirements; any mandatory requirement makes the volume unsupported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<Value>,
    /// Members we do not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Serde for 64-bit numbers stored as decimal strings (LUKS2 on-disk format §3).
pub mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Parse a decimal string of digits only (no sign, no spaces).
    pub fn parse(s: &str) -> Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("{s:?} is not a decimal number"));
        }
        s.parse::<u64>()
            .map_err(|_| format!("{s:?} overflows 64 bits"))
    }

    /// Serialize as a decimal string.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    /// Deserialize from a decimal string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde for binary values stored as standard base64 with padding.
pub mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize as base64.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    /// Deserialize from base64.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("bad base64: {e}")))
    }
}
