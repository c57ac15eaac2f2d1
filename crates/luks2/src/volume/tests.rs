//! Header updates on a real (temporary, sparse) image file, each read back: a volume made by
//! [`format`](super::format) with a cheap PBKDF2 keyslot (1000 iterations), then one update,
//! then [`load_header`](super::load_header) and [`unlock`](super::unlock) as a later command
//! would. The crash steps and injected faults are the integration tests' (`keyslots`,
//! `header_ops`, `faults`): those need a process to stop.
//!
//! Over 800 lines: one test per header operation (keyslot changes, erase, repair, backup and
//! restore, seqid and cost limits), all on the same image fixture; split by operation they
//! would each repeat it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::header::{BinaryHeader, Copy};
use crate::format::metadata::{Id, Metadata};
use crate::format::{decode_copy, encode_copy, DEFAULT_DATA_OFFSET};

use super::{
    add_keyslot, change_keyslot, check_backup, check_backup_fits, erase, format, header_bytes,
    kill_keyslot, load_header, open_image, repair, replace_token, restore_header, unlock,
    verify_volume_key, Access, FormatOptions, KdfChoice, KdfKind, LoadedHeader, NewKeyslot,
    OpenedImage, UpdateState, VolumeError, MAX_KEYSLOTS,
};

const PASS: &[u8] = b"first passphrase";

fn cheap_kdf() -> KdfChoice {
    KdfChoice {
        kind: KdfKind::Pbkdf2,
        force_iterations: Some(1000),
        ..KdfChoice::default()
    }
}

/// A fresh 17 MiB volume (one 1 MiB data area after the 16 MiB header) in a temporary
/// directory, keyslot 0 opening with [`PASS`].
struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Image {
    fn new() -> Image {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        let opts = FormatOptions {
            size: Some(DEFAULT_DATA_OFFSET + (1 << 20)),
            sector_size: 512,
            kdf: cheap_kdf(),
            label: Some("unit".into()),
            header: None,
        };
        format(&path, &opts, PASS).unwrap();
        Image { _dir: dir, path }
    }

    /// Open as a header writer and load, as every header-updating command does.
    fn open(&self) -> (File, LoadedHeader) {
        let f = open_image(&self.path, Access::HeaderWrite).unwrap();
        let lh = load_header(&f, &self.path).unwrap();
        (f, lh)
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    /// Which keyslot `pass` opens, read through a handle of its own without locks (the
    /// header writer's handle may still be open).
    fn opens(&self, pass: &[u8]) -> Result<u32, VolumeError> {
        let f = File::open(&self.path).unwrap();
        let lh = load_header(&f, &self.path).unwrap();
        unlock(&f, &self.path, &lh, pass, None, None).map(|k| k.keyslot)
    }
}

/// Both copies valid, equal and at `seqid`; nothing to warn about.
fn assert_clean(lh: &LoadedHeader, seqid: u64) {
    assert!(lh.warnings.is_empty(), "{:?}", lh.warnings);
    assert_eq!(lh.header.seqid, seqid);
    assert_eq!(lh.max_seqid, seqid);
    assert_eq!(lh.header.copy, Copy::Primary);
}

#[test]
fn a_created_volume_loads_and_opens() {
    let img = Image::new();
    let (f, lh) = img.open();
    assert_clean(&lh, 1);
    assert_eq!(lh.header.label, "unit");
    assert_eq!(lh.segment.offset, DEFAULT_DATA_OFFSET);
    assert_eq!(lh.segment.size, 1 << 20);
    assert!(!lh.detached);
    assert_eq!(lh.header_area_len(), DEFAULT_DATA_OFFSET);
    let key = unlock(&f, &img.path, &lh, PASS, None, None).unwrap();
    assert_eq!(key.keyslot, 0);
    verify_volume_key(&img.path, &lh, key.key.expose()).unwrap();
    assert!(matches!(
        verify_volume_key(&img.path, &lh, &[0u8; 64]),
        Err(VolumeError::InvalidArgument(_))
    ));
    assert!(matches!(
        img.opens(b"wrong"),
        Err(VolumeError::WrongPassphrase)
    ));
}

#[test]
fn add_change_kill_keyslot_read_back() {
    let img = Image::new();
    let (f, lh) = img.open();
    let vk = unlock(&f, &img.path, &lh, PASS, None, None).unwrap().key;
    let kdf = cheap_kdf();
    let token = serde_json::json!({"type": "unit-test", "keyslots": []});
    let new = NewKeyslot {
        passphrase: b"second",
        slot: None,
        kdf: &kdf,
        token: Some(token),
    };
    assert_eq!(add_keyslot(&f, &img.path, &lh, &vk, new).unwrap(), 1);
    drop(f);
    assert_eq!(img.opens(b"second").unwrap(), 1);
    assert_eq!(img.opens(PASS).unwrap(), 0);
    let (f, lh) = img.open();
    assert_clean(&lh, 2);
    assert_eq!(lh.metadata.digests[&Id(0)].keyslots, ["0", "1"]);
    assert_eq!(
        lh.metadata.tokens[&Id(0)]["keyslots"],
        serde_json::json!(["1"])
    );

    change_keyslot(&f, &img.path, &lh, 1, &vk, b"third", &kdf).unwrap();
    drop(f);
    assert!(matches!(
        img.opens(b"second"),
        Err(VolumeError::WrongPassphrase)
    ));
    assert_eq!(img.opens(b"third").unwrap(), 1);
    let (f, after) = img.open();
    assert_clean(&after, 3);
    let (old, new) = (
        &lh.metadata.keyslots[&Id(1)].area,
        &after.metadata.keyslots[&Id(1)].area,
    );
    assert_ne!(old.offset, new.offset, "the new key goes to a new area");

    kill_keyslot(&f, &img.path, &after, 1).unwrap();
    drop(f);
    assert!(matches!(
        img.opens(b"third"),
        Err(VolumeError::WrongPassphrase)
    ));
    let (_f, lh) = img.open();
    assert_clean(&lh, 4);
    assert!(!lh.metadata.keyslots.contains_key(&Id(1)));
    assert_eq!(lh.metadata.digests[&Id(0)].keyslots, ["0"]);
    // Other tokens are kept, without the removed slot.
    assert_eq!(
        lh.metadata.tokens[&Id(0)]["keyslots"],
        serde_json::json!([])
    );
}

#[test]
fn kill_wipes_the_keyslot_area() {
    let img = Image::new();
    let (f, lh) = img.open();
    let area = lh.metadata.keyslots[&Id(0)].area.clone();
    let read_area = || {
        let mut b = vec![0u8; area.size as usize];
        File::open(&img.path)
            .unwrap()
            .read_exact_at(&mut b, area.offset)
            .unwrap();
        b
    };
    let before = read_area();
    kill_keyslot(&f, &img.path, &lh, 0).unwrap();
    assert_ne!(read_area(), before);
    drop(f);
    assert!(matches!(
        img.opens(PASS),
        Err(VolumeError::NoUsableKeyslot { keyslot: None, .. })
    ));
}

/// Every refusal is made before anything is written: the image is byte-identical after.
#[test]
fn refused_keyslot_changes_write_nothing() {
    let img = Image::new();
    let (f, lh) = img.open();
    let vk = unlock(&f, &img.path, &lh, PASS, None, None).unwrap().key;
    let kdf = cheap_kdf();
    let before = img.bytes();
    let cases: Vec<(Option<u32>, &str)> = vec![
        (Some(0), "keyslot 0 is already in use"),
        (Some(MAX_KEYSLOTS), "out of range"),
    ];
    for (slot, needle) in cases {
        let new = NewKeyslot {
            passphrase: b"x",
            slot,
            kdf: &kdf,
            token: None,
        };
        match add_keyslot(&f, &img.path, &lh, &vk, new) {
            Err(VolumeError::InvalidArgument(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("slot {slot:?}: {other:?}"),
        }
    }
    match kill_keyslot(&f, &img.path, &lh, 7) {
        Err(VolumeError::InvalidArgument(m)) => assert!(m.contains("not in use"), "{m}"),
        other => panic!("{other:?}"),
    }
    let weak = KdfChoice {
        force_iterations: Some(999),
        ..cheap_kdf()
    };
    let new = NewKeyslot {
        passphrase: b"x",
        slot: None,
        kdf: &weak,
        token: None,
    };
    assert!(matches!(
        add_keyslot(&f, &img.path, &lh, &vk, new),
        Err(VolumeError::InvalidArgument(_))
    ));
    assert!(matches!(
        replace_token(&f, &img.path, &lh, 3, serde_json::json!({})),
        Err(VolumeError::InvalidArgument(_))
    ));
    assert!(img.bytes() == before, "a refused change wrote to the image");
}

#[test]
fn erase_leaves_no_keyslot() {
    let img = Image::new();
    let (f, lh) = img.open();
    erase(&f, &img.path, &lh).unwrap();
    drop(f);
    let (_f, lh) = img.open();
    assert_clean(&lh, 2);
    assert!(lh.metadata.keyslots.is_empty());
    assert!(lh.metadata.digests[&Id(0)].keyslots.is_empty());
    assert!(matches!(
        img.opens(PASS),
        Err(VolumeError::NoUsableKeyslot { .. })
    ));
}

/// A damaged primary: the reader uses the secondary and warns; `repair` writes both copies as
/// the next version; a second `repair` has nothing to do.
#[test]
fn repair_rewrites_a_damaged_primary() {
    let img = Image::new();
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .unwrap();
        f.write_all_at(b"X", 4096 + 10).unwrap(); // inside the primary JSON
    }
    let (f, lh) = img.open();
    assert_eq!(lh.header.copy, Copy::Secondary);
    assert!(
        lh.warnings[0].contains("primary header is damaged"),
        "{:?}",
        lh.warnings
    );
    assert!(repair(&f, &img.path, &lh).unwrap());
    drop(f);
    let (f, lh) = img.open();
    assert_clean(&lh, 2);
    assert!(!repair(&f, &img.path, &lh).unwrap());
    drop(f);
    assert_eq!(img.opens(PASS).unwrap(), 0);
}

/// A header backup is the header area; restoring it brings back its keyslots, as the next
/// version above the image's.
#[test]
fn backup_and_restore_round_trip() {
    let img = Image::new();
    let (f, lh) = img.open();
    let backup = header_bytes(&f, &img.path, &lh).unwrap();
    assert_eq!(backup.len() as u64, DEFAULT_DATA_OFFSET);
    let (h, md) = check_backup(Path::new("backup"), &backup).unwrap();
    assert_eq!((h.seqid, md.clone()), (1, lh.metadata.clone()));

    kill_keyslot(&f, &img.path, &lh, 0).unwrap();
    drop(f);
    assert!(img.opens(PASS).is_err());
    let (f, lh) = img.open();
    restore_header(&f, &img.path, &backup, Some(lh.max_seqid)).unwrap();
    drop(f);
    let (_f, lh) = img.open();
    assert_clean(&lh, 3);
    assert_eq!(lh.metadata, md);
    assert_eq!(img.opens(PASS).unwrap(), 0);
}

#[test]
fn check_backup_refusals() {
    let img = Image::new();
    let (f, lh) = img.open();
    let good = header_bytes(&f, &img.path, &lh).unwrap();
    // (mutation of a good backup, text of the error)
    type Mutation = fn(&mut Vec<u8>);
    let rows: Vec<(Mutation, &str)> = vec![
        (
            |b| b.truncate(b.len() - 4096),
            "header says the header area is",
        ),
        (|b| b.push(0), "header says the header area is"),
        (
            |b| {
                b[4096 + 10] ^= 1;
                b[16384 + 4096 + 10] ^= 1;
            },
            "not a LUKS2 header backup",
        ),
        (|b| b.truncate(100), "not a LUKS2 header backup"),
    ];
    for (mutate, needle) in rows {
        let mut b = good.clone();
        mutate(&mut b);
        match check_backup(Path::new("backup"), &b) {
            Err(VolumeError::Corrupt { reason, .. }) => {
                assert!(reason.contains(needle), "{reason}")
            }
            other => panic!("{needle}: {other:?}"),
        }
    }
    // One damaged copy in the backup is fine: the other is used.
    let mut b = good.clone();
    b[4096 + 10] ^= 1;
    assert_eq!(
        check_backup(Path::new("backup"), &b).unwrap().1,
        lh.metadata
    );
}

#[test]
fn backup_must_fit_the_device() {
    use crate::format::metadata::SegmentSize;
    let img = Image::new();
    let (_f, lh) = img.open();
    let dev = (&lh.header, &lh.metadata);
    type Mutation = fn(&mut BinaryHeader, &mut Metadata);
    fn seg(md: &mut Metadata) -> &mut crate::format::metadata::Segment {
        md.segments.values_mut().next().unwrap()
    }
    // (mutation of the device's own header, text of the refusal; "" = accepted)
    let rows: Vec<(Mutation, &str)> = vec![
        (|_, _| {}, ""),
        (|h, _| h.uuid = "another".into(), ""),
        (
            |_, m| seg(m).offset += 4096,
            "Data offset differ on device and backup",
        ),
        (
            |_, m| seg(m).offset = 0,
            "Data offset differ on device and backup",
        ),
        (
            |h, _| h.hdr_size = 32768,
            "Binary header with keyslot areas size differ",
        ),
        (
            |_, m| m.config.keyslots_size -= 4096,
            "Binary header with keyslot areas size differ",
        ),
        (
            |_, m| seg(m).size = SegmentSize::Bytes(1 << 20),
            "Data segment differ",
        ),
        (
            |_, m| seg(m).sector_size = 512 + 4096 - seg(m).sector_size,
            "Data segment differ",
        ),
        (
            |_, m| seg(m).encryption = "aes-cbc-essiv:sha256".into(),
            "Data segment differ",
        ),
        (|_, m| seg(m).iv_tweak = 1, "Data segment differ"),
    ];
    for (mutate, needle) in rows {
        let (mut h, mut md) = (lh.header.clone(), lh.metadata.clone());
        mutate(&mut h, &mut md);
        match (check_backup_fits(dev, (&h, &md)), needle) {
            (Ok(()), "") => {}
            (Err(VolumeError::InvalidArgument(m)), n) if !n.is_empty() && m.contains(n) => {}
            (other, n) => panic!("{n}: {other:?}"),
        }
    }
}

#[test]
fn replace_token_is_the_next_version() {
    let img = Image::new();
    let (f, lh) = img.open();
    let vk = unlock(&f, &img.path, &lh, PASS, None, None).unwrap().key;
    let kdf = cheap_kdf();
    let new = NewKeyslot {
        passphrase: b"service",
        slot: Some(5),
        kdf: &kdf,
        token: Some(serde_json::json!({"type": "unit-test", "kek_version": 1})),
    };
    assert_eq!(add_keyslot(&f, &img.path, &lh, &vk, new).unwrap(), 5);
    drop(f);
    let (f, lh) = img.open();
    let mut t = lh.metadata.tokens[&Id(0)].clone();
    t["kek_version"] = 2.into();
    replace_token(&f, &img.path, &lh, 0, t.clone()).unwrap();
    drop(f);
    let (_f, after) = img.open();
    assert_clean(&after, 3);
    assert_eq!(after.metadata.tokens[&Id(0)], t);
    assert_eq!(after.metadata.keyslots, lh.metadata.keyslots);
    assert_eq!(img.opens(b"service").unwrap(), 5);
}

/// A failed update reports the state it left, read back: here a commit to a file that is not
/// writable fails before anything changed.
#[test]
fn a_failed_write_reports_unchanged() {
    let img = Image::new();
    let (_f, lh) = img.open();
    let ro = File::open(&img.path).unwrap();
    let before = img.bytes();
    match repair(
        &ro,
        &img.path,
        &LoadedHeader {
            warnings: vec!["force a rewrite".into()],
            ..lh
        },
    ) {
        Err(VolumeError::Update { state, .. }) => assert_eq!(state, UpdateState::Unchanged),
        other => panic!("{other:?}"),
    }
    assert!(img.bytes() == before);
}

/// A header at the largest `seqid`: every update is refused (the next `seqid` would wrap to
/// 0 and lose to the older copy), naming the seqid, before anything is written.
#[test]
fn an_update_at_the_largest_seqid_is_refused() {
    let img = Image::new();
    let mut b = img.bytes();
    let backup = b[..DEFAULT_DATA_OFFSET as usize].to_vec();
    for at in [0, 16384] {
        edit_copy(&mut b, at, |h, _| h.seqid = u64::MAX);
    }
    std::fs::write(&img.path, &b).unwrap();
    let (f, lh) = img.open();
    assert_clean(&lh, u64::MAX);
    let vk = unlock(&f, &img.path, &lh, PASS, None, None).unwrap().key;
    let kdf = cheap_kdf();
    let forced = LoadedHeader {
        warnings: vec!["force a rewrite".into()],
        ..lh.clone()
    };
    let new = || NewKeyslot {
        passphrase: b"x",
        slot: None,
        kdf: &kdf,
        token: None,
    };
    let results: Vec<(&str, Result<(), VolumeError>)> = vec![
        (
            "add",
            add_keyslot(&f, &img.path, &lh, &vk, new()).map(|_| ()),
        ),
        (
            "change",
            change_keyslot(&f, &img.path, &lh, 0, &vk, b"y", &kdf),
        ),
        ("kill", kill_keyslot(&f, &img.path, &lh, 0)),
        ("erase", erase(&f, &img.path, &lh)),
        ("repair", repair(&f, &img.path, &forced).map(|_| ())),
        (
            "restore",
            restore_header(&f, &img.path, &backup, Some(lh.max_seqid)),
        ),
    ];
    for (op, r) in results {
        match r {
            Err(VolumeError::Unsupported { reason, .. }) => {
                assert!(reason.contains(&u64::MAX.to_string()), "{op}: {reason}")
            }
            other => panic!("{op}: {other:?}"),
        }
        assert!(
            img.bytes() == b,
            "{op}: a refused update wrote to the image"
        );
    }
}

/// Re-encode the copy at `at` of the header bytes `b` after `f` changed it (sealed again).
fn edit_copy(b: &mut [u8], at: usize, f: impl Fn(&mut BinaryHeader, &mut Metadata)) {
    let (mut h, mut md) = decode_copy(&b[at..at + 16384], at as u64).unwrap();
    f(&mut h, &mut md);
    b[at..at + 16384].copy_from_slice(&encode_copy(&h, &md).unwrap());
}

/// Which copy the reader takes and what it warns about (`format-spec.md` §2.3), or why it
/// refuses the image: one row per state of the two copies, applied to a fresh image's first
/// 32 KiB (both copies), the image optionally cut short. Nothing is ever written by the reader.
#[test]
fn load_header_copy_choice_table() {
    enum Want {
        /// The copy chosen, its seqid, `max_seqid`, and the warning (empty: none).
        Loads(Copy, u64, u64, &'static str),
        /// The error, by the text of its message.
        Refused(&'static str),
    }
    type Row = (&'static str, fn(&mut Vec<u8>), Option<u64>, Want);
    let rows: Vec<Row> = vec![
        (
            "as created",
            |_| {},
            None,
            Want::Loads(Copy::Primary, 1, 1, ""),
        ),
        (
            "newer secondary",
            |b| edit_copy(b, 16384, |h, _| (h.seqid, h.label) = (2, "newer".into())),
            None,
            Want::Loads(
                Copy::Secondary,
                2,
                2,
                "header copies differ (primary seqid 1, secondary seqid 2); using the newer",
            ),
        ),
        (
            "newer primary",
            |b| edit_copy(b, 0, |h, _| h.seqid = 7),
            None,
            Want::Loads(Copy::Primary, 7, 7, "header copies differ"),
        ),
        (
            "tie with different contents",
            |b| edit_copy(b, 16384, |h, _| h.label = "tied".into()),
            None,
            Want::Loads(
                Copy::Primary,
                1,
                1,
                "header copies differ at the same seqid 1; using the primary",
            ),
        ),
        (
            "primary checksum",
            |b| b[4096 + 10] ^= 0x20,
            None,
            Want::Loads(
                Copy::Secondary,
                1,
                1,
                "primary header is damaged (header checksum mismatch); using the secondary",
            ),
        ),
        (
            "secondary checksum",
            |b| b[16384 + 4096 + 10] ^= 0x20,
            None,
            Want::Loads(Copy::Primary, 1, 1, "secondary header is damaged"),
        ),
        (
            "primary with a bad layout and a higher seqid",
            |b| {
                edit_copy(b, 0, |h, m| {
                    h.seqid = 5;
                    m.keyslots.get_mut(&Id(0)).unwrap().area.offset = 16700000;
                })
            },
            None,
            // Refused, but its checksum holds: the next version is numbered above it.
            Want::Loads(
                Copy::Secondary,
                1,
                5,
                "primary header is damaged (keyslot 0 area",
            ),
        ),
        (
            "both checksums",
            |b| {
                b[4096 + 10] ^= 0x20;
                b[16384 + 4096 + 10] ^= 0x20;
            },
            None,
            Want::Refused("both header copies are damaged: primary: header checksum mismatch"),
        ),
        (
            "no magic",
            |b| b.fill(0),
            None,
            Want::Refused("is not a valid LUKS device"),
        ),
        (
            "LUKS1 version in both",
            |b| {
                for at in [0, 16384] {
                    b[at + 7] = 1;
                    crate::format::header::seal(&mut b[at..at + 16384]);
                }
            },
            None,
            Want::Refused("LUKS version 1 is not supported"),
        ),
        (
            "cut inside the header",
            |_| {},
            Some(8192),
            Want::Refused("truncated"),
        ),
        (
            "cut before the data segment",
            |_| {},
            Some(1 << 20),
            Want::Refused("beyond the end of the image"),
        ),
    ];
    for (what, mutate, cut, want) in rows {
        let img = Image::new();
        {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img.path)
                .unwrap();
            let mut b = vec![0u8; 32768];
            f.read_exact_at(&mut b, 0).unwrap();
            mutate(&mut b);
            f.write_all_at(&b, 0).unwrap();
            if let Some(len) = cut {
                f.set_len(len).unwrap();
            }
        }
        let before = img.bytes();
        let f = open_image(&img.path, Access::Inspect).unwrap();
        let got = load_header(&f, &img.path);
        match (&got, want) {
            (Ok(lh), Want::Loads(copy, seqid, max, warning)) => {
                assert_eq!(
                    (lh.header.copy, lh.header.seqid, lh.max_seqid),
                    (copy, seqid, max),
                    "{what}"
                );
                match warning {
                    "" => assert!(lh.warnings.is_empty(), "{what}: {:?}", lh.warnings),
                    w => assert!(
                        lh.warnings.len() == 1 && lh.warnings[0].contains(w),
                        "{what}: {:?}",
                        lh.warnings
                    ),
                }
            }
            (Err(e), Want::Refused(needle)) => {
                assert!(e.to_string().contains(needle), "{what}: {e}")
            }
            (got, _) => panic!("{what}: {got:?}"),
        }
        assert!(img.bytes() == before, "{what}: the reader wrote");
    }
}

/// Where a new keyslot area goes: the first 4096-aligned gap of the keyslots area (here
/// `[32768, 16777216)`) that holds it, or nowhere.
#[test]
fn free_area_first_fit() {
    let img = Image::new();
    let (_f, lh) = img.open();
    let size = lh.metadata.keyslots[&Id(0)].area.size;
    assert_eq!(size, 258048);
    // (areas in use as (offset, size), expected place)
    type Row = (Vec<(u64, u64)>, Option<u64>);
    let rows: Vec<Row> = vec![
        (vec![], Some(32768)),
        (vec![(32768, size)], Some(290816)),
        // A gap too small is skipped; one just large enough is taken.
        (vec![(32768, size), (331776, size)], Some(589824)),
        (vec![(32768, size), (548864, size)], Some(290816)),
        (vec![(548864, size)], Some(32768)),
        // The end of an area is rounded up to 4096 bytes.
        (vec![(32768, 258000)], Some(290816)),
        // Room for exactly one more at the end, then none.
        (
            vec![(32768, 16777216 - 32768 - size)],
            Some(16777216 - size),
        ),
        (vec![(32768, 16777216 - 32768 - size + 1)], None),
    ];
    for (used, want) in rows {
        let mut lh = lh.clone();
        let template = lh.metadata.keyslots[&Id(0)].clone();
        lh.metadata.keyslots.clear();
        for (i, (offset, size)) in used.iter().enumerate() {
            let mut ks = template.clone();
            (ks.area.offset, ks.area.size) = (*offset, *size);
            lh.metadata.keyslots.insert(Id(i as u32), ks);
        }
        assert_eq!(
            super::keyslot_create::free_area(&lh, size),
            want,
            "{used:?}"
        );
    }
}

/// The files of `volume/` import each other in one direction only: each uses only files listed
/// before it in the module documentation of `mod.rs` (so there is no cycle), and every file
/// is listed there.
#[test]
fn files_import_only_files_listed_before_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/volume");
    let doc = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
    let order: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("//! - "))
        .flat_map(|l| {
            let head = l.split_once(':').map_or(l, |(h, _)| h);
            head.split(", ")
                .map(|n| n.trim_matches('`').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if name == "mod" || name == "tests" {
            continue;
        }
        seen += 1;
        let at = order
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("{name}.rs is not listed in mod.rs's documentation"));
        let src = std::fs::read_to_string(&path).unwrap();
        let code = src.split("#[cfg(test)]").next().unwrap();
        for (i, _) in code.match_indices("super::") {
            let rest = &code[i + "super::".len()..];
            let Some((dep, _)) = rest.split_once("::") else {
                continue;
            };
            if !dep.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue; // `super::Item` in a doc link, not a file
            }
            let d = order
                .iter()
                .position(|n| n == dep)
                .unwrap_or_else(|| panic!("{name}.rs uses {dep}, which is not listed"));
            assert!(d < at, "{name}.rs uses {dep}.rs, which is listed after it");
        }
    }
    assert_eq!(seen, order.len(), "listed: {order:?}");
}

/// A detached header (cryptsetup `--header`, `format-spec.md` §1.1): created in its own file,
/// the data segment from offset 0 of the image; read as the image's header it is refused as
/// one, read with the data file it opens, and a keyslot added to it leaves the data file alone.
#[test]
fn detached_header_create_and_update() {
    let dir = tempfile::tempdir().unwrap();
    let (data, hdr) = (dir.path().join("data.img"), dir.path().join("hdr.img"));
    let opts = FormatOptions {
        size: Some(1 << 20),
        sector_size: 4096,
        kdf: cheap_kdf(),
        label: None,
        header: Some(hdr.clone()),
    };
    format(&data, &opts, PASS).unwrap();
    let f = open_image(&hdr, Access::Inspect).unwrap();
    assert!(matches!(
        load_header(&f, &hdr),
        Err(VolumeError::DetachedHeader { data_offset: 0, .. })
    ));
    drop(f);
    let data_before = std::fs::read(&data).unwrap();
    let img = OpenedImage::open(&data, Some(&hdr), Access::HeaderWrite).unwrap();
    let lh = img.load().unwrap();
    assert!(lh.detached);
    assert_eq!((lh.segment.offset, lh.segment.size), (0, 1 << 20));
    assert_eq!(lh.segment.sector_size, 4096);
    let vk = unlock(&img.header, &hdr, &lh, PASS, None, None)
        .unwrap()
        .key;
    let kdf = cheap_kdf();
    let new = NewKeyslot {
        passphrase: b"second",
        slot: None,
        kdf: &kdf,
        token: None,
    };
    assert_eq!(add_keyslot(&img.header, &hdr, &lh, &vk, new).unwrap(), 1);
    let lh = img.load().unwrap();
    assert_clean(&lh, 2);
    assert_eq!(
        unlock(&img.header, &hdr, &lh, b"second", None, None)
            .unwrap()
            .keyslot,
        1
    );
    assert!(
        std::fs::read(&data).unwrap() == data_before,
        "the data file was written"
    );
}

/// A keyslot or digest whose estimated KDF time is above the limit is refused before it runs
/// (a hostile header's 2^32-1 iterations would take minutes), naming what and the flag.
#[test]
fn unlock_refuses_kdf_costs_above_the_time_limit() {
    use super::unlock::unlock_limited;
    let img = Image::new();
    let (f, lh) = img.open();
    let started = std::time::Instant::now();
    let slow = |edit: fn(&mut Metadata)| {
        let mut lh = lh.clone();
        edit(&mut lh.metadata);
        unlock_limited(&f, &img.path, &lh, PASS, None, None, 60)
    };
    let e = slow(|m| {
        m.keyslots
            .get_mut(&Id(0))
            .unwrap()
            .kdf
            .as_mut()
            .unwrap()
            .iterations = Some(u32::MAX)
    })
    .err()
    .unwrap();
    assert!(matches!(e, VolumeError::TooSlow { .. }), "{e:?}");
    assert!(e.to_string().contains("keyslot 0") && e.to_string().contains("--unlock-time-limit"));
    let e = slow(|m| m.digests.get_mut(&Id(0)).unwrap().iterations = u32::MAX)
        .err()
        .unwrap();
    assert!(e.to_string().starts_with("digest 0 would take"), "{e}");
    let mut hostile = lh.clone();
    hostile.metadata.digests.get_mut(&Id(0)).unwrap().iterations = u32::MAX;
    let e = super::verify_volume_key_limited(&img.path, &hostile, &[0; 64], 60).unwrap_err();
    assert!(matches!(e, VolumeError::TooSlow { .. }), "{e:?}");
    let e = slow(|m| {
        let k = m.keyslots.get_mut(&Id(0)).unwrap().kdf.as_mut().unwrap();
        (k.kind, k.iterations, k.hash) = ("argon2id".into(), None, None);
        (k.time, k.memory, k.cpus) = (Some(1 << 24), Some(32), Some(1));
    })
    .err()
    .unwrap();
    assert!(matches!(e, VolumeError::TooSlow { .. }), "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Within the limit it opens; a limit of 0 s still lets the cheap slot through.
    assert_eq!(
        unlock_limited(&f, &img.path, &lh, PASS, None, None, 0)
            .unwrap()
            .keyslot,
        0
    );
}
