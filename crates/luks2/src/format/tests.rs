//! The header-defect table: one row per defect of a metadata copy, each a mutation of a valid
//! copy made by this crate's own serializer ([`encode_copy`]), with the [`FormatError`] kind and
//! message it must get. A copy goes through every check a reader applies before it uses a
//! keyslot: [`decode_copy`], [`data_segment`], [`segment_digest`], [`keyslot_profile`]. No I/O,
//! no keys: the whole table runs in milliseconds.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::header::{self, BinaryHeader, Copy, BINARY_HEADER_SIZE};
use super::metadata::{
    Af, Area, Config, DigestEntry, Id, Kdf, Keyslot, Metadata, Segment, SegmentSize,
};
use super::*;

/// A 17 MiB image: the default 16 MiB header, then 1 MiB of data.
const IMAGE_LEN: u64 = DEFAULT_DATA_OFFSET + (1 << 20);

/// A valid primary copy as `volume::format` makes it: keyslot 0 (PBKDF2, AF 4000 stripes, area
/// at 32 KiB), one dynamic `aes-xts-plain64` segment at 16 MiB, its `pbkdf2` digest.
fn valid() -> (BinaryHeader, Metadata) {
    let keyslot = Keyslot {
        kind: "luks2".into(),
        key_size: VOLUME_KEY_SIZE as u32,
        af: Some(Af {
            kind: "luks1".into(),
            stripes: AF_STRIPES,
            hash: "sha256".into(),
            extra: Map::new(),
        }),
        area: Area {
            kind: "raw".into(),
            offset: 2 * DEFAULT_HDR_SIZE,
            size: af_material_len(VOLUME_KEY_SIZE as u64, AF_STRIPES as u64).div_ceil(4096) * 4096,
            encryption: Some(CIPHER.into()),
            key_size: Some(VOLUME_KEY_SIZE as u32),
            extra: Map::new(),
        },
        kdf: Some(Kdf {
            kind: "pbkdf2".into(),
            hash: Some("sha256".into()),
            iterations: Some(1000),
            time: None,
            memory: None,
            cpus: None,
            salt: vec![7; 32],
            extra: Map::new(),
        }),
        priority: None,
        extra: Map::new(),
    };
    let md = Metadata {
        keyslots: BTreeMap::from([(Id(0), keyslot)]),
        tokens: BTreeMap::new(),
        segments: BTreeMap::from([(
            Id(0),
            Segment {
                kind: "crypt".into(),
                offset: DEFAULT_DATA_OFFSET,
                size: SegmentSize::Dynamic,
                iv_tweak: 0,
                encryption: CIPHER.into(),
                sector_size: 512,
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
                iterations: 1000,
                salt: vec![1; 32],
                digest: vec![2; 32],
                extra: Map::new(),
            },
        )]),
        config: Config {
            json_size: DEFAULT_HDR_SIZE - BINARY_HEADER_SIZE as u64,
            keyslots_size: DEFAULT_DATA_OFFSET - 2 * DEFAULT_HDR_SIZE,
            flags: None,
            requirements: None,
            extra: Map::new(),
        },
        extra: Map::new(),
    };
    let hdr = BinaryHeader {
        copy: Copy::Primary,
        hdr_size: DEFAULT_HDR_SIZE,
        seqid: 1,
        label: "table".into(),
        checksum_alg: "sha256".into(),
        salt: [3; 64],
        uuid: "3a6c1e0e-8f1d-4c3b-9a57-0e2f2c1d5b6a".into(),
        subsystem: String::new(),
        hdr_offset: 0,
        csum: [0; 64],
    };
    (hdr, md)
}

/// Every check a reader applies to a copy read at offset 0 of an image of `image_len` bytes
/// before it uses keyslot material; the first failure.
fn check(bytes: &[u8], image_len: u64) -> Result<(), FormatError> {
    let (_, md) = decode_copy(bytes, 0)?;
    data_segment(&md, image_len)?;
    segment_digest(&md)?;
    for id in md.keyslots.keys() {
        keyslot_profile(&md, id.0)?;
    }
    Ok(())
}

/// A copy whose JSON area holds `text`, NUL-padded (no NUL when it fills the area), sealed.
fn with_json_text(text: &[u8]) -> Vec<u8> {
    let (h, md) = valid();
    let mut b = encode_copy(&h, &md).unwrap();
    let area = &mut b[BINARY_HEADER_SIZE..];
    assert!(text.len() <= area.len(), "text does not fit the JSON area");
    area.fill(0);
    area[..text.len()].copy_from_slice(text);
    header::seal(&mut b);
    b
}

fn json_text() -> Vec<u8> {
    serde_json::to_vec(&valid().1).unwrap()
}

/// How a row damages the valid copy.
enum Defect {
    /// Change the binary header, then encode and seal.
    Header(fn(&mut BinaryHeader)),
    /// Change the metadata, then encode and seal.
    Metadata(fn(&mut Metadata)),
    /// Change the JSON object as text would be edited (members the types cannot express).
    Json(fn(&mut Value)),
    /// Replace the JSON text (bytes in, bytes out), then seal.
    Text(fn(&[u8]) -> Vec<u8>),
    /// Change the sealed bytes; the checksum is not fixed.
    Bytes(fn(&mut Vec<u8>)),
    /// Change the sealed bytes, then seal again.
    Resealed(fn(&mut Vec<u8>)),
    /// The valid copy in an image of this many bytes.
    ImageLen(u64),
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    NotLuks,
    Corrupt,
    Unsupported,
    Invalid,
}

fn kind(e: &FormatError) -> Kind {
    match e {
        FormatError::NotLuks => Kind::NotLuks,
        FormatError::Corrupt(_) => Kind::Corrupt,
        FormatError::Unsupported(_) => Kind::Unsupported,
        FormatError::Invalid(_) => Kind::Invalid,
    }
}

/// The bytes and image length of a row's defective copy.
fn apply(defect: &Defect) -> (Vec<u8>, u64) {
    let (mut h, mut md) = valid();
    let mut image_len = IMAGE_LEN;
    let bytes = match defect {
        Defect::Header(f) => {
            f(&mut h);
            encode_copy(&h, &md).unwrap()
        }
        Defect::Metadata(f) => {
            f(&mut md);
            encode_copy(&h, &md).unwrap()
        }
        Defect::Json(f) => {
            let mut v = serde_json::to_value(&md).unwrap();
            f(&mut v);
            with_json_text(&serde_json::to_vec(&v).unwrap())
        }
        Defect::Text(f) => with_json_text(&f(&json_text())),
        Defect::Bytes(f) | Defect::Resealed(f) => {
            let mut b = encode_copy(&h, &md).unwrap();
            f(&mut b);
            if matches!(defect, Defect::Resealed(_)) {
                header::seal(&mut b);
            }
            b
        }
        Defect::ImageLen(n) => {
            image_len = *n;
            encode_copy(&h, &md).unwrap()
        }
    };
    (bytes, image_len)
}

fn keyslot(v: &mut Metadata) -> &mut Keyslot {
    v.keyslots.get_mut(&Id(0)).unwrap()
}

fn kdf(v: &mut Metadata) -> &mut Kdf {
    keyslot(v).kdf.as_mut().unwrap()
}

fn segment(v: &mut Metadata) -> &mut Segment {
    v.segments.get_mut(&Id(0)).unwrap()
}

fn text(t: &[u8]) -> String {
    String::from_utf8(t.to_vec()).unwrap()
}

/// (what, defect, expected kind, text the message contains)
fn rows() -> Vec<(&'static str, Defect, Kind, &'static str)> {
    use Defect as D;
    use Kind as K;
    vec![
        // The binary header (`format-spec.md` §2).
        ("no magic", D::Bytes(|b| b[..6].fill(0)), K::NotLuks, ""),
        (
            "LUKS1 version",
            D::Resealed(|b| b[7] = 1),
            K::Unsupported,
            "LUKS version 1 is not supported",
        ),
        (
            "hdr_size not a LUKS2 size",
            D::Resealed(|b| b[8..16].copy_from_slice(&12345u64.to_be_bytes())),
            K::Corrupt,
            "hdr_size 12345 is not a LUKS2 metadata size",
        ),
        (
            "checksum algorithm",
            D::Header(|h| h.checksum_alg = "sha1".into()),
            K::Unsupported,
            "header checksum algorithm sha1 is not supported",
        ),
        (
            "label without NUL",
            D::Resealed(|b| b[24..72].fill(b'a')),
            K::Corrupt,
            "binary header field label is not NUL-terminated",
        ),
        (
            "uuid not UTF-8",
            D::Resealed(|b| b[168] = 0xff),
            K::Corrupt,
            "binary header field uuid is not UTF-8",
        ),
        (
            "checksum mismatch in the JSON",
            D::Bytes(|b| b[BINARY_HEADER_SIZE + 10] ^= 0x20),
            K::Corrupt,
            "header checksum mismatch",
        ),
        (
            "checksum mismatch in the binary header",
            D::Bytes(|b| b[100] ^= 1),
            K::Corrupt,
            "header checksum mismatch",
        ),
        (
            "hdr_offset elsewhere",
            D::Header(|h| h.hdr_offset = 16384),
            K::Corrupt,
            "hdr_offset 16384 does not match the copy's position 0",
        ),
        (
            "copy cut short",
            D::Bytes(|b| b.truncate(8192)),
            K::Corrupt,
            "metadata copy is 8192 bytes, header says 16384",
        ),
        (
            "binary header cut short",
            D::Bytes(|b| b.truncate(100)),
            K::Corrupt,
            "binary header is 100 bytes",
        ),
        // The JSON text (`format-spec.md` §3).
        (
            "JSON that is not JSON",
            D::Text(|_| b"{not json!!".to_vec()),
            K::Corrupt,
            "JSON metadata is not valid",
        ),
        (
            "JSON over its area",
            D::Text(|t| {
                let mut t = t.to_vec();
                t.resize(16384 - BINARY_HEADER_SIZE, b' ');
                t
            }),
            K::Corrupt,
            "JSON metadata is not terminated within its area",
        ),
        (
            "JSON not UTF-8",
            D::Text(|t| {
                let mut t = t.to_vec();
                let at = t.windows(7).position(|w| w == b"\"luks2\"").unwrap();
                t[at + 4] = 0xff;
                t
            }),
            K::Corrupt,
            "JSON metadata is not valid LUKS2 JSON",
        ),
        (
            "duplicate top-level member",
            D::Text(|t| {
                let mut v = b"{\"tokens\":{},".to_vec();
                v.extend_from_slice(&t[1..]);
                v
            }),
            K::Corrupt,
            "duplicate member \"tokens\"",
        ),
        (
            "duplicate keyslot id",
            D::Text(|t| {
                let v: Value = serde_json::from_slice(t).unwrap();
                let mut other = v["keyslots"]["0"].clone();
                other["priority"] = 2.into();
                let twice = format!("\"keyslots\":{{\"0\":{other},");
                text(t).replacen("\"keyslots\":{", &twice, 1).into_bytes()
            }),
            K::Corrupt,
            "duplicate member \"0\"",
        ),
        (
            "id in two spellings",
            D::Text(|t| {
                text(t)
                    .replacen("\"keyslots\":{\"0\":", "\"keyslots\":{\"00\":", 1)
                    .into_bytes()
            }),
            K::Corrupt,
            "object id \"00\" is not in canonical form",
        ),
        (
            "number as a JSON number",
            D::Json(|v| v["config"]["keyslots_size"] = 16711680.into()),
            K::Corrupt,
            "JSON metadata is not valid LUKS2 JSON",
        ),
        (
            "signed decimal string",
            D::Json(|v| v["segments"]["0"]["offset"] = "+16777216".into()),
            K::Corrupt,
            "is not a decimal number",
        ),
        (
            "config.json_size",
            D::Metadata(|m| m.config.json_size = 4096),
            K::Corrupt,
            "config.json_size 4096 does not match the header's JSON area of 12288 bytes",
        ),
        (
            "mandatory requirement",
            D::Metadata(|m| {
                m.config.requirements = Some(json!({"mandatory": ["online-reencrypt"]}))
            }),
            K::Unsupported,
            "config.requirements",
        ),
        // Keyslot areas (`format-spec.md` §3.2).
        (
            "keyslot area outside the keyslots area",
            D::Json(|v| v["keyslots"]["0"]["area"]["offset"] = "16700000".into()),
            K::Corrupt,
            "keyslot 0 area [16700000, 16958048) is outside the keyslots area",
        ),
        (
            "keyslot area before the keyslots area",
            D::Metadata(|m| keyslot(m).area.offset = 4096),
            K::Corrupt,
            "is outside the keyslots area",
        ),
        (
            "keyslot area smaller than its material",
            D::Metadata(|m| keyslot(m).area.size = 4096),
            K::Corrupt,
            "keyslot 0 area of 4096 bytes is smaller than its 256000 bytes of key material",
        ),
        (
            "keyslot area offset overflows",
            D::Metadata(|m| keyslot(m).area.offset = u64::MAX - 10),
            K::Corrupt,
            "keyslot 0 area offset + size overflows",
        ),
        (
            "overlapping keyslot areas",
            D::Json(|v| {
                let mut ks1 = v["keyslots"]["0"].clone();
                ks1["area"]["offset"] = "36864".into();
                v["keyslots"]["1"] = ks1;
            }),
            K::Corrupt,
            "keyslot areas of keyslots 0 and 1 overlap",
        ),
        // The data segment (`format-spec.md` §3.2).
        (
            "two segments",
            D::Metadata(|m| {
                let s = m.segments[&Id(0)].clone();
                m.segments.insert(Id(1), s);
            }),
            K::Unsupported,
            "2 segments are not supported",
        ),
        (
            "segment type",
            D::Metadata(|m| segment(m).kind = "linear".into()),
            K::Unsupported,
            "segment 0 type linear is not supported",
        ),
        (
            "cipher",
            D::Metadata(|m| segment(m).encryption = "serpent-xts-plain64".into()),
            K::Unsupported,
            "cipher serpent-xts-plain64 is not supported",
        ),
        (
            "sector size",
            D::Metadata(|m| segment(m).sector_size = 8192),
            K::Unsupported,
            "sector_size 8192 is not supported",
        ),
        (
            "iv_tweak",
            D::Metadata(|m| segment(m).iv_tweak = 1),
            K::Unsupported,
            "segment iv_tweak 1 is not supported",
        ),
        (
            "segment integrity",
            D::Json(|v| v["segments"]["0"]["integrity"] = json!({"type": "hmac(sha256)"})),
            K::Unsupported,
            "segment integrity",
        ),
        (
            "segment flags",
            D::Json(|v| v["segments"]["0"]["flags"] = json!(["backup-previous"])),
            K::Unsupported,
            "segment flags",
        ),
        (
            "keyslots area above cryptsetup's 128 MiB",
            D::Json(|v| {
                v["config"]["keyslots_size"] = "8589934592".into();
                v["segments"]["0"]["offset"] = "8589967360".into();
            }),
            K::Unsupported,
            "config.keyslots_size 8589934592 is not supported",
        ),
        (
            "keyslots area not in whole 4 KiB",
            D::Json(|v| v["config"]["keyslots_size"] = "16711168".into()),
            K::Unsupported,
            "config.keyslots_size 16711168 is not supported",
        ),
        (
            "keyslots area reaching into the data segment",
            D::Json(|v| {
                v["config"]["keyslots_size"] = "17039360".into();
                v["keyslots"]["0"]["area"]["offset"] = "16773120".into();
            }),
            K::Corrupt,
            "data segment offset 16777216 overlaps the header",
        ),
        (
            "segment not sector-aligned",
            D::Metadata(|m| {
                segment(m).offset = DEFAULT_DATA_OFFSET + 512;
                segment(m).sector_size = 4096;
            }),
            K::Corrupt,
            "not sector-aligned",
        ),
        (
            "fixed-size segment past the end",
            D::Json(|v| v["segments"]["0"]["size"] = "2097152".into()),
            K::Corrupt,
            "data segment [16777216, +2097152) is not inside the image",
        ),
        (
            "fixed size not whole sectors",
            D::Json(|v| v["segments"]["0"]["size"] = "1000".into()),
            K::Corrupt,
            "is not inside the image",
        ),
        (
            "image ends before the data segment",
            D::ImageLen(1 << 20),
            K::Corrupt,
            "data segment offset 16777216 is beyond the end of the image (1048576 bytes)",
        ),
        // Digests (`format-spec.md` §3.3).
        (
            "digest naming a missing keyslot",
            D::Json(|v| v["digests"]["0"]["keyslots"] = json!(["0", "5"])),
            K::Corrupt,
            "digest 0 names keyslot \"5\", which does not exist",
        ),
        (
            "digest naming a keyslot twice",
            D::Json(|v| v["digests"]["0"]["keyslots"] = json!(["0", "0"])),
            K::Corrupt,
            "digest 0 names keyslot \"0\" more than once",
        ),
        (
            "digest naming a segment twice",
            D::Json(|v| v["digests"]["0"]["segments"] = json!(["0", "0"])),
            K::Corrupt,
            "digest 0 names segment \"0\" more than once",
        ),
        (
            "digest value shorter than its hash",
            D::Metadata(|m| m.digests.get_mut(&Id(0)).unwrap().digest = vec![2]),
            K::Corrupt,
            "digest 0 value is 1 bytes, but a sha256 digest is 32 bytes",
        ),
        (
            "digest value longer than its hash",
            D::Metadata(|m| m.digests.get_mut(&Id(0)).unwrap().digest = vec![2; 4096]),
            K::Corrupt,
            "digest 0 value is 4096 bytes",
        ),
        (
            "digest value between LUKS1's and its hash's",
            D::Metadata(|m| m.digests.get_mut(&Id(0)).unwrap().digest = vec![2; 24]),
            K::Corrupt,
            "digest 0 value is 24 bytes, but a sha256 digest is 32 bytes (or 20, converted from LUKS1)",
        ),
        (
            "digest salt of absurd size",
            D::Metadata(|m| m.digests.get_mut(&Id(0)).unwrap().salt = vec![1; 4096]),
            K::Corrupt,
            "digest 0 salt is 4096 bytes",
        ),
        (
            "digest without a salt",
            D::Metadata(|m| m.digests.get_mut(&Id(0)).unwrap().salt = vec![]),
            K::Corrupt,
            "digest 0 salt is 0 bytes",
        ),
        (
            "token naming a keyslot twice",
            D::Json(|v| {
                v["tokens"]["0"] = json!({"type": "x", "keyslots": ["0", "0"]});
            }),
            K::Corrupt,
            "token 0 names keyslot \"0\" more than once",
        ),
        (
            "digest naming a missing segment",
            D::Json(|v| v["digests"]["0"]["segments"] = json!(["0", "1"])),
            K::Corrupt,
            "digest 0 names segment \"1\", which does not exist",
        ),
        (
            "no digest for the segment",
            D::Metadata(|m| m.digests.get_mut(&Id(0)).unwrap().segments.clear()),
            K::Corrupt,
            "no digest covers segment 0",
        ),
        (
            "digest hash",
            D::Metadata(|m| {
                let d = m.digests.get_mut(&Id(0)).unwrap();
                d.hash = "sha1".into();
                d.digest = vec![2; 20];
            }),
            K::Unsupported,
            "digest 0 hash sha1 is not supported",
        ),
        (
            "digest type",
            D::Metadata(|m| m.digests.get_mut(&Id(0)).unwrap().kind = "argon2".into()),
            K::Unsupported,
            "digest 0 type argon2 is not supported",
        ),
        // Keyslots (`format-spec.md` §3.1, §4).
        (
            "keyslot type",
            D::Metadata(|m| keyslot(m).kind = "reencrypt".into()),
            K::Unsupported,
            "keyslot 0 type reencrypt is not supported",
        ),
        (
            "keyslot area cipher",
            D::Metadata(|m| keyslot(m).area.encryption = Some("aes-cbc-essiv:sha256".into())),
            K::Unsupported,
            "keyslot 0 area raw with cipher aes-cbc-essiv:sha256 is not supported",
        ),
        (
            "keyslot area key size",
            D::Metadata(|m| keyslot(m).area.key_size = Some(48)),
            K::Unsupported,
            "keyslot 0 area key_size 48 is not supported",
        ),
        (
            "keyslot without kdf",
            D::Metadata(|m| keyslot(m).kdf = None),
            K::Corrupt,
            "keyslot 0 has no af or kdf object",
        ),
        (
            "AF with 0 stripes",
            D::Json(|v| v["keyslots"]["0"]["af"]["stripes"] = 0.into()),
            K::Unsupported,
            "keyslot 0 AF luks1/0 stripes/sha256 is not supported",
        ),
        (
            "key size 0",
            D::Json(|v| v["keyslots"]["0"]["key_size"] = 0.into()),
            K::Unsupported,
            "keyslot 0 key_size 0 is not supported",
        ),
        (
            "pbkdf2 hash",
            D::Json(|v| v["keyslots"]["0"]["kdf"]["hash"] = "whirlpool".into()),
            K::Unsupported,
            "keyslot 0 pbkdf2 hash whirlpool is not supported",
        ),
        (
            "pbkdf2 without iterations",
            D::Metadata(|m| kdf(m).iterations = None),
            K::Corrupt,
            "keyslot 0 kdf has no iterations",
        ),
        (
            "argon2 time above the maximum",
            D::Metadata(|m| {
                let k = kdf(m);
                k.kind = "argon2id".into();
                k.hash = None;
                k.iterations = None;
                (k.time, k.memory, k.cpus) = (Some(ARGON2_MAX_TIME + 1), Some(1 << 20), Some(4));
            }),
            K::Unsupported,
            "keyslot 0 argon2 time cost 16777217 is above the maximum of 16777216",
        ),
        (
            "argon2 without memory",
            D::Metadata(|m| {
                let k = kdf(m);
                k.kind = "argon2i".into();
                (k.time, k.cpus) = (Some(4), Some(4));
            }),
            K::Corrupt,
            "keyslot 0 kdf has no memory",
        ),
        (
            "kdf type",
            D::Metadata(|m| kdf(m).kind = "scrypt".into()),
            K::Unsupported,
            "keyslot 0 kdf scrypt is not supported",
        ),
    ]
}

#[test]
fn the_valid_copy_passes_every_check() {
    let (h, md) = valid();
    let bytes = encode_copy(&h, &md).unwrap();
    assert_eq!(bytes.len() as u64, DEFAULT_HDR_SIZE);
    check(&bytes, IMAGE_LEN).unwrap();
    let (h2, md2) = decode_copy(&bytes, 0).unwrap();
    assert_eq!(md2, md);
    assert_eq!(h2.csum[..32], header::checksum(&bytes));
    assert_eq!(
        (h2.seqid, h2.label.as_str(), h2.uuid.as_str()),
        (1, "table", h.uuid.as_str())
    );
    assert_eq!(
        data_segment(&md, IMAGE_LEN).unwrap(),
        DataSegment {
            offset: DEFAULT_DATA_OFFSET,
            size: 1 << 20,
            sector_size: 512
        }
    );
    // The same copy as the secondary, at its own offset.
    let sec = BinaryHeader {
        copy: Copy::Secondary,
        hdr_offset: DEFAULT_HDR_SIZE,
        ..h
    };
    let bytes = encode_copy(&sec, &md).unwrap();
    assert_eq!(
        decode_copy(&bytes, DEFAULT_HDR_SIZE).unwrap().0.copy,
        Copy::Secondary
    );
}

#[test]
fn header_defect_table() {
    let rows = rows();
    let mut failures = Vec::new();
    for (what, defect, want, needle) in &rows {
        let (bytes, image_len) = apply(defect);
        match check(&bytes, image_len) {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(e) if kind(&e) != *want || !e.to_string().contains(needle) => failures.push(
                format!("{what}: got {:?} {e:?}, want {want:?} {needle:?}", kind(&e)),
            ),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the encoder refuses: values that do not fit the format.
#[test]
fn encode_refusals() {
    type Row = (
        &'static str,
        fn(&mut BinaryHeader, &mut Metadata),
        &'static str,
    );
    let rows: Vec<Row> = vec![
        (
            "label of 48 bytes",
            |h, _| h.label = "l".repeat(48),
            "label must be at most 47 bytes",
        ),
        (
            "label with NUL",
            |h, _| h.label = "a\0b".into(),
            "label must be at most 47 bytes",
        ),
        (
            "uuid of 40 bytes",
            |h, _| h.uuid = "u".repeat(40),
            "uuid must be at most 39 bytes",
        ),
        (
            "JSON over its area",
            |_, m| {
                m.tokens
                    .insert(Id(0), json!({"type": "big", "pad": "x".repeat(13000)}));
            },
            "does not fit the 12288-byte JSON area",
        ),
    ];
    for (what, mutate, needle) in rows {
        let (mut h, mut md) = valid();
        mutate(&mut h, &mut md);
        match encode_copy(&h, &md) {
            Err(FormatError::Invalid(m)) => assert!(m.contains(needle), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// Keyslots and tokens the profile does not interpret survive a decode and re-encode (a
/// rewrite by nbdcrypt must not drop what cryptsetup wrote).
#[test]
fn unknown_members_survive_a_rewrite() {
    let (h, mut md) = valid();
    md.tokens.insert(
        Id(3),
        json!({"type": "systemd-tpm2", "keyslots": ["0"], "x": [1, 2]}),
    );
    md.config.flags = Some(vec!["allow-discards".into()]);
    let mut v = serde_json::to_value(&md).unwrap();
    v["keyslots"]["0"]["area"]["future"] = "kept".into();
    v["future_top"] = json!({"a": 1});
    let bytes = with_json_text(&serde_json::to_vec(&v).unwrap());
    let (_, md2) = decode_copy(&bytes, 0).unwrap();
    let again = encode_copy(&h, &md2).unwrap();
    let (_, md3) = decode_copy(&again, 0).unwrap();
    assert_eq!(serde_json::to_value(&md3).unwrap(), v);
}

#[test]
fn a_digest_converted_from_luks1_passes_every_check() {
    // `cryptsetup convert --type luks2` keeps LUKS1's 20-byte digest under sha256.
    let (h, mut md) = valid();
    md.digests.get_mut(&Id(0)).unwrap().digest = vec![7; LUKS1_DIGEST_LEN];
    check(&encode_copy(&h, &md).unwrap(), IMAGE_LEN).unwrap();
}
