//! Bad input gets a clear error, the documented exit code, and nothing is written.

use crate::common;

use common::*;
use nbdcrypt::format::{self, header::BINARY_HEADER_SIZE};
use sha2::{Digest, Sha256};
use std::path::Path;

fn file_hash(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// Run test-passphrase, dump and open on `img`; each must exit `code` with `needle` in its one
/// error line, and leave the file byte-identical.
fn refused(img: &Path, key: &Path, code: i32, needle: &str) {
    let before = std::fs::metadata(img).ok().map(|_| file_hash(img));
    for args in [
        vec!["test-passphrase"],
        vec!["dump"],
        vec!["open", "--socket"],
    ] {
        let mut c = nbdcrypt();
        c.arg(args[0]).arg(img);
        if args[0] != "dump" {
            c.arg("--key-file").arg(key);
        }
        if args.len() > 1 {
            c.arg(args[1]).arg(img.with_extension("sock"));
        }
        let out = run(&mut c);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?} on {}: {err}",
            img.display()
        );
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
        assert!(
            err.lines().filter(|l| !l.starts_with("hint:")).count() == 1,
            "one error line expected: {err:?}"
        );
    }
    let after = std::fs::metadata(img).ok().map(|_| file_hash(img));
    assert_eq!(before, after, "{} was modified", img.display());
}

fn fresh(dir: &Path, name: &str, key: &Path) -> std::path::PathBuf {
    let img = dir.join(name);
    format_cheap(&img, key, "17M", 512, "pbkdf2");
    img
}

#[test]
fn wrong_passphrase_is_exit_2() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "v.img", &key);
    let bad = dir.path().join("bad");
    std::fs::write(&bad, b"wrong").unwrap();
    let before = file_hash(&img);
    for cmd in ["test-passphrase", "open"] {
        let out = run(nbdcrypt().arg(cmd).arg(&img).arg("--key-file").arg(&bad));
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        assert!(stderr(&out).contains("No key available with this passphrase"));
    }
    assert_eq!(before, file_hash(&img));
}

#[test]
fn not_luks_missing_truncated() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let plain = dir.path().join("plain.img");
    std::fs::write(&plain, pattern(1 << 20, 5)).unwrap();
    refused(&plain, &key, 1, "is not a valid LUKS device");
    let zero = dir.path().join("empty.img");
    std::fs::write(&zero, b"").unwrap();
    refused(&zero, &key, 1, "is not a valid LUKS device");

    let missing = dir.path().join("missing.img");
    refused(&missing, &key, 4, "missing.img");

    // Truncated inside the header: both copies fail.
    let img = fresh(dir.path(), "t.img", &key);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(8192).unwrap();
    refused(&img, &key, 1, "truncated");
    // The hint names nbdcrypt's own remedies, not cryptsetup's.
    let err = stderr(&run(nbdcrypt().arg("dump").arg(&img)));
    assert!(
        err.contains("hint:")
            && err.contains("nbdcrypt repair")
            && !err.contains("cryptsetup repair"),
        "{err}"
    );
    // Truncated before the data segment: the segment is outside the file.
    let img = fresh(dir.path(), "t2.img", &key);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(1 << 20).unwrap();
    refused(&img, &key, 1, "beyond the end of the image");
}

#[test]
fn bad_checksums_in_both_copies() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "c.img", &key);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[4096 + 10] ^= 0x20; // inside the primary JSON
    bytes[16384 + 4096 + 10] ^= 0x20; // inside the secondary JSON
    std::fs::write(&img, &bytes).unwrap();
    refused(&img, &key, 1, "both header copies are damaged");
    let out = run(nbdcrypt().arg("dump").arg(&img));
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn json_area_that_is_not_json() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "j.img", &key);
    let mut bytes = std::fs::read(&img).unwrap();
    for at in [0usize, 16384] {
        let area = &mut bytes[at..at + 16384];
        area[BINARY_HEADER_SIZE..BINARY_HEADER_SIZE + 12].copy_from_slice(b"{not json!!\0");
        format::header::seal(area);
    }
    std::fs::write(&img, &bytes).unwrap();
    refused(&img, &key, 1, "JSON metadata is not valid");
}

#[test]
fn damaged_primary_opens_from_secondary_without_writing() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "p.img", &key);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[100] ^= 1; // checksum_alg padding of the primary: checksum now fails
    std::fs::write(&img, &bytes).unwrap();
    let before = file_hash(&img);
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: primary header is damaged"),
        "{}",
        stderr(&out)
    );
    let out = run(nbdcrypt().arg("dump").arg(&img));
    assert_eq!(out.status.code(), Some(0));
    let mut srv = Server::start(&img, &key, &[]);
    let (st, _) = srv.stop();
    assert!(st.success());
    assert_eq!(before, file_hash(&img), "nothing may repair silently");
}

#[test]
fn unsupported_fields_are_named() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "u.img", &key);
    edit_metadata(&img, |v| {
        v["segments"]["0"]["encryption"] = "serpent-xts-plain64".into();
    });
    refused(&img, &key, 1, "cipher serpent-xts-plain64 is not supported");

    let img = fresh(dir.path(), "k.img", &key);
    edit_metadata(&img, |v| {
        v["keyslots"]["0"]["kdf"]["hash"] = "whirlpool".into();
    });
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("pbkdf2 hash whirlpool is not supported"));

    let img = fresh(dir.path(), "o.img", &key);
    edit_metadata(&img, |v| {
        v["keyslots"]["0"]["area"]["offset"] = "16700000".into();
    });
    refused(&img, &key, 1, "outside the keyslots area");
}

#[test]
fn busy_image_is_exit_5() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "b.img", &key);
    let mut srv = Server::start(&img, &key, &[]);
    let out = run(nbdcrypt()
        .arg("open")
        .arg(&img)
        .arg("--key-file")
        .arg(&key)
        .arg("--socket")
        .arg(dir.path().join("other.sock")));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("in use"));
    let out = run(nbdcrypt()
        .arg("format")
        .arg(&img)
        .arg("--batch-mode")
        .arg("--key-file")
        .arg(&key));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // Read-only inspection still works while served, ours and cryptsetup's (it would wait
    // forever on an exclusive lock).
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(0));
    let out = run(std::process::Command::new("timeout")
        .arg("20")
        .arg(require("cryptsetup", "cryptsetup-bin"))
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&key)
        .arg(&img));
    assert_eq!(
        out.status.code(),
        Some(0),
        "cryptsetup on a served image: {}",
        stderr(&out)
    );
    // A read-only server cannot join a read-write one either.
    let out = run(nbdcrypt()
        .arg("open")
        .arg(&img)
        .arg("--read-only")
        .arg("--key-file")
        .arg(&key)
        .arg("--socket")
        .arg(dir.path().join("ro.sock")));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let (st, _) = srv.stop();
    assert!(st.success());
}

#[test]
fn format_refuses_to_clobber_without_batch_mode() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "f.img", &key);
    let before = file_hash(&img);
    let out = run(nbdcrypt()
        .arg("format")
        .arg(&img)
        .arg("--key-file")
        .arg(&key));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--batch-mode"), "{}", stderr(&out));
    assert_eq!(before, file_hash(&img));
}

/// Images that hold data made by the real tools: (name, how to make it, blkid's name).
fn data_images(dir: &Path) -> Vec<(std::path::PathBuf, &'static str)> {
    let sh = |script: &str, img: &Path| {
        let out = run(std::process::Command::new("sh")
            .args(["-ec", script, "sh"])
            .arg(img)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"));
        assert!(out.status.success(), "{script}: {}", stderr(&out));
    };
    require("mkfs.ext4", "e2fsprogs");
    require("sfdisk", "fdisk");
    require("mkfs.vfat", "dosfstools");
    require("qemu-img", "qemu-utils");
    let cases = [
        (
            "ext4.img",
            "truncate -s 32M \"$1\"; mkfs.ext4 -q \"$1\"",
            "ext4",
        ),
        (
            "swap.img",
            "truncate -s 32M \"$1\"; mkswap \"$1\" >/dev/null",
            "swap",
        ),
        (
            "gpt.img",
            "truncate -s 32M \"$1\"; echo 'label: gpt' | sfdisk -q \"$1\"",
            "gpt",
        ),
        (
            "dos.img",
            "truncate -s 32M \"$1\"; echo ',,83' | sfdisk -q \"$1\"",
            "dos",
        ),
        (
            "fat.img",
            "truncate -s 32M \"$1\"; mkfs.vfat -F 32 \"$1\" >/dev/null",
            "vfat",
        ),
        (
            "disk.qcow2",
            "qemu-img create -q -f qcow2 \"$1\" 32M",
            "qcow2",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, script, kind)| {
            let img = dir.join(name);
            sh(script, &img);
            (img, kind)
        })
        .collect()
}

#[test]
fn format_asks_before_destroying_recognisable_data() {
    let dir = tempdir();
    let key = key_file(dir.path());
    for (img, kind) in data_images(dir.path()) {
        let before = file_hash(&img);
        // No terminal, no --batch-mode: refused, naming what was found, nothing written.
        let out = run(nbdcrypt()
            .arg("format")
            .arg(&img)
            .arg("--key-file")
            .arg(&key));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{kind}: {err}");
        assert!(
            err.contains(&format!("'{kind}' signature")) && err.contains("--batch-mode"),
            "{kind}: {err}"
        );
        assert_eq!(before, file_hash(&img), "{kind}: the image was written");
        // Opening it says what it holds and does not suggest `format`.
        let out = run(nbdcrypt().arg("dump").arg(&img));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{kind}: {err}");
        assert!(
            err.contains("is not a valid LUKS device (it holds"),
            "{kind}: {err}"
        );
        assert!(!err.contains("nbdcrypt format IMAGE"), "{kind}: {err}");
    }
    // --batch-mode goes ahead, as cryptsetup -q does.
    let img = dir.path().join("ext4.img");
    let mut c = nbdcrypt();
    c.arg("format")
        .arg(&img)
        .arg("-q")
        .arg("--key-file")
        .arg(&key);
    c.args(cheap_kdf_args("argon2id"));
    ok(&mut c);
    ok(nbdcrypt()
        .arg("test-passphrase")
        .arg(&img)
        .arg("--key-file")
        .arg(&key));
    // Random bytes and zeros are nothing to lose: no question.
    let plain = dir.path().join("noise.img");
    std::fs::write(&plain, pattern(32 << 20, 9)).unwrap();
    let mut c = nbdcrypt();
    c.arg("format").arg(&plain).arg("--key-file").arg(&key);
    c.args(cheap_kdf_args("argon2id"));
    ok(&mut c);
}

#[test]
fn empty_key_file_and_bad_flags() {
    let dir = tempdir();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let img = dir.path().join("e.img");
    let out = run(nbdcrypt()
        .arg("format")
        .arg(&img)
        .args(["--size", "20M", "--key-file"])
        .arg(&empty));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("empty"));
    let out = run(nbdcrypt()
        .arg("format")
        .arg(&img)
        .args(["--sector-size", "1000"]));
    assert_eq!(out.status.code(), Some(1));
    let out = run(nbdcrypt().arg("format").arg(&img).args(["--size", "1Q"]));
    assert_eq!(out.status.code(), Some(1));
    let key = key_file(dir.path());
    let out = run(nbdcrypt()
        .arg("format")
        .arg(&img)
        .args(["--size", "1M", "--key-file"])
        .arg(&key));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("too small"), "{}", stderr(&out));
}

/// An Argon2 keyslot whose memory cost cannot be allocated is exit 3 (out of memory), here
/// forced with an address-space limit; a cost above cryptsetup's 4 GiB maximum is refused as
/// unsupported before anything is allocated.
#[test]
fn argon2_memory_out_of_reach() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("m.img");
    format_cheap(&img, &key, "17M", 512, "argon2id");
    let before = file_hash(&img);
    edit_metadata(&img, |v| {
        v["keyslots"]["0"]["kdf"]["memory"] = (1u32 << 20).into(); // 1 GiB
    });
    let out = run(std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && exec \"$0\" test-passphrase \"$1\" --key-file \"$2\"")
        .arg(env!("CARGO_BIN_EXE_nbdcrypt"))
        .arg(&img)
        .arg(&key));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("KiB of memory"), "{}", stderr(&out));

    edit_metadata(&img, |v| {
        v["keyslots"]["0"]["kdf"]["memory"] = u32::MAX.into();
    });
    let edited = file_hash(&img);
    assert_ne!(before, edited);
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("above the maximum of 4194304 KiB"),
        "{}",
        stderr(&out)
    );
    assert_eq!(edited, file_hash(&img));
}

#[test]
fn overlapping_keyslot_areas_are_refused() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "ov.img", &key);
    edit_metadata(&img, |v| {
        let mut ks1 = v["keyslots"]["0"].clone();
        ks1["area"]["offset"] = "36864".into();
        v["keyslots"]["1"] = ks1;
    });
    refused(&img, &key, 1, "keyslot areas of keyslots 0 and 1 overlap");
}

/// The valid copy with the higher seqid wins, whichever copy it is; nothing is rewritten.
#[test]
fn higher_seqid_wins() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "s.img", &key);
    let mut bytes = std::fs::read(&img).unwrap();
    let (mut hdr, md) = format::decode_copy(&bytes[16384..32768], 16384).unwrap();
    hdr.seqid += 1;
    hdr.label = "newer-secondary".into();
    let copy = format::encode_copy(&hdr, &md).unwrap();
    bytes[16384..32768].copy_from_slice(&copy);
    std::fs::write(&img, &bytes).unwrap();
    let before = file_hash(&img);
    let out = run(nbdcrypt().arg("dump").arg(&img));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Label:         \tnewer-secondary"), "{text}");
    assert!(text.contains("Epoch:         \t2"), "{text}");
    assert!(
        stderr(&out).contains("header copies differ"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, file_hash(&img));
}

/// A copy whose checksum is fine but whose layout is not (a keyslot area outside the keyslots
/// area) counts as damaged: the other copy is used, as cryptsetup does, and nothing is written.
#[test]
fn copy_with_bad_layout_falls_back_to_the_other() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "l.img", &key);
    edit_copy(&img, 0, &|v| {
        v["keyslots"]["0"]["area"]["offset"] = "16700000".into();
    });
    let before = file_hash(&img);
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("primary header is damaged (keyslot 0 area"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, file_hash(&img));
}

// Hostile headers: one generated header per defect, each with its error class.
// Cases elsewhere in this file: bad checksum in one copy (damaged_primary_opens_from_secondary_
// without_writing), unknown cipher (unsupported_fields_are_named), 1 GiB Argon2 memory
// (argon2_memory_out_of_reach), overlapping keyslot areas, truncated images.

/// Rewrite the JSON text of both metadata copies with `edit` (bytes in, bytes out; the area is
/// NUL-padded after it, or filled to the last byte when the text is that long), checksums fixed.
fn edit_json_text(img: &Path, edit: &dyn Fn(&[u8]) -> Vec<u8>) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    for at in [0u64, 16384] {
        let mut copy = vec![0u8; 16384];
        file.read_exact_at(&mut copy, at).unwrap();
        let area = &mut copy[BINARY_HEADER_SIZE..];
        let end = area.iter().position(|&c| c == 0).unwrap();
        let mut text = edit(&area[..end]);
        assert!(text.len() <= area.len(), "edited JSON does not fit");
        text.resize(area.len(), 0);
        area.copy_from_slice(&text);
        format::header::seal(&mut copy);
        file.write_all_at(&copy, at).unwrap();
    }
}

/// test-passphrase and open (which read the keyslots; dump only shows them) exit `code` with
/// `needle` in the error, and the image is unchanged.
fn keyslot_refused(img: &Path, key: &Path, code: i32, needle: &str) {
    let before = file_hash(img);
    for cmd in ["test-passphrase", "open"] {
        let out = if cmd == "test-passphrase" {
            test_passphrase(img, key, &[])
        } else {
            run(nbdcrypt()
                .arg(cmd)
                .arg(img)
                .arg("--key-file")
                .arg(key)
                .arg("--socket")
                .arg(img.with_extension("sock")))
        };
        assert_eq!(out.status.code(), Some(code), "{cmd}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{cmd}: expected {needle:?} in {}",
            stderr(&out)
        );
    }
    assert_eq!(before, file_hash(img), "{} was modified", img.display());
}

/// Equal seqids but different contents: no copy is newer, the primary is used (as
/// cryptsetup does) with a warning, and nothing is rewritten.
#[test]
fn hostile_seqid_tie_uses_the_primary() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "tie.img", &key);
    let mut bytes = std::fs::read(&img).unwrap();
    let (mut hdr, md) = format::decode_copy(&bytes[16384..32768], 16384).unwrap();
    hdr.label = "tied-secondary".into();
    bytes[16384..32768].copy_from_slice(&format::encode_copy(&hdr, &md).unwrap());
    std::fs::write(&img, &bytes).unwrap();
    let before = file_hash(&img);
    let out = run(nbdcrypt().arg("dump").arg(&img));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("tied-secondary"), "{text}");
    assert!(
        stderr(&out).contains("header copies differ at the same seqid 1; using the primary"),
        "{}",
        stderr(&out)
    );
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(before, file_hash(&img));
}

/// JSON text that fills its area with no terminating NUL: corrupt.
#[test]
fn hostile_json_over_its_area() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "over.img", &key);
    edit_json_text(&img, &|t| {
        let mut t = t.to_vec();
        t.resize(16384 - BINARY_HEADER_SIZE, b' ');
        t
    });
    refused(
        &img,
        &key,
        1,
        "JSON metadata is not terminated within its area",
    );
}

/// A keyslots area (and a keyslot area in it) reaching into the data segment: corrupt.
#[test]
fn hostile_keyslot_area_overlapping_the_data_segment() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "kd.img", &key);
    edit_metadata(&img, |v| {
        v["config"]["keyslots_size"] = "17039360".into();
        v["keyslots"]["0"]["area"]["offset"] = "16773120".into();
    });
    refused(
        &img,
        &key,
        1,
        "data segment offset 16777216 overlaps the header",
    );
}

/// A fixed-size data segment running past the end of the image: corrupt.
#[test]
fn hostile_segment_past_the_end() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "end.img", &key);
    edit_metadata(&img, |v| {
        v["segments"]["0"]["size"] = "2097152".into();
    });
    refused(&img, &key, 1, "is not inside the image");
}

/// A digest naming a keyslot that does not exist: corrupt (cryptsetup refuses it too).
#[test]
fn hostile_digest_naming_a_missing_keyslot() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "dg.img", &key);
    edit_metadata(&img, |v| {
        v["digests"]["0"]["keyslots"] = serde_json::json!(["0", "5"]);
    });
    refused(
        &img,
        &key,
        1,
        "digest 0 names keyslot \"5\", which does not exist",
    );
}

/// AF with 0 stripes, and a key size of 0: the keyslot is outside the profile (unsupported),
/// refused before any KDF runs.
#[test]
fn hostile_af_stripes_and_key_size_zero() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "af.img", &key);
    edit_metadata(&img, |v| {
        v["keyslots"]["0"]["af"]["stripes"] = 0.into();
    });
    keyslot_refused(
        &img,
        &key,
        1,
        "keyslot 0 AF luks1/0 stripes/sha256 is not supported",
    );
    let img = fresh(dir.path(), "ks.img", &key);
    edit_metadata(&img, |v| {
        v["keyslots"]["0"]["key_size"] = 0.into();
    });
    keyslot_refused(&img, &key, 1, "keyslot 0 key_size 0 is not supported");
}

/// The same member twice, at the top level or as a keyslot id (one parser would keep the
/// first, another the last), and an id in two spellings ("0", "00"): corrupt.
#[test]
fn hostile_duplicated_json_keys() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "dup.img", &key);
    edit_json_text(&img, &|t| {
        let mut v = b"{\"tokens\":{},".to_vec();
        v.extend_from_slice(&t[1..]);
        v
    });
    refused(&img, &key, 1, "duplicate member \"tokens\"");

    let img = fresh(dir.path(), "dupks.img", &key);
    edit_json_text(&img, &|t| {
        let v: serde_json::Value = serde_json::from_slice(t).unwrap();
        let mut other = v["keyslots"]["0"].clone();
        other["priority"] = 2.into();
        let text = String::from_utf8(t.to_vec()).unwrap();
        let twice = format!("\"keyslots\":{{\"0\":{other},");
        text.replacen("\"keyslots\":{", &twice, 1).into_bytes()
    });
    refused(&img, &key, 1, "duplicate member \"0\"");

    let img = fresh(dir.path(), "dup00.img", &key);
    edit_json_text(&img, &|t| {
        let text = String::from_utf8(t.to_vec()).unwrap();
        text.replacen("\"keyslots\":{\"0\":", "\"keyslots\":{\"00\":", 1)
            .into_bytes()
    });
    refused(&img, &key, 1, "object id \"00\" is not in canonical form");
}

/// Bytes that are not UTF-8 inside a JSON string: corrupt.
#[test]
fn hostile_non_utf8_json() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "utf.img", &key);
    edit_json_text(&img, &|t| {
        let mut t = t.to_vec();
        let at = t.windows(7).position(|w| w == b"\"luks2\"").unwrap();
        t[at + 4] = 0xff;
        t
    });
    refused(&img, &key, 1, "JSON metadata is not valid LUKS2 JSON");
}

/// Both 16 KiB header copies of `img` (a fresh volume), decoded, changed by `edit` and written
/// back with correct checksums (the crate's own encoder).
pub(crate) fn rewrite_both_copies(
    img: &Path,
    edit: &mut dyn FnMut(&mut format::header::BinaryHeader, &mut format::metadata::Metadata),
) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    for at in [0u64, 16384] {
        let mut copy = vec![0u8; 16384];
        file.read_exact_at(&mut copy, at).unwrap();
        let (mut hdr, mut md) = format::decode_copy(&copy, at).unwrap();
        edit(&mut hdr, &mut md);
        file.write_all_at(&format::encode_copy(&hdr, &md).unwrap(), at)
            .unwrap();
    }
}

/// Header strings reach the terminal escaped: a label, a token type and a token field with a
/// newline and an escape sequence are dumped as `\n` and `\x1b` (no forged line, no control
/// byte), `dump --json` keeps them verbatim in valid JSON, and an unsupported cipher with them
/// is named escaped in the one error line.
#[test]
fn header_strings_are_escaped_for_the_terminal() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "v.img", &key);
    let evil = "x\n\x1b[2J\r\x08\u{9b}1m\u{202e}";
    let shown = r"x\n\x1b[2J\r\x08\x9b1m\u{202e}";
    rewrite_both_copies(&img, &mut |hdr, md| {
        hdr.label = evil.into();
        md.tokens.insert(
            format::metadata::Id(0),
            serde_json::json!({"type": evil, "keyslots": [], "key_description": evil}),
        );
    });
    let out = ok(nbdcrypt().arg("dump").arg(&img));
    assert!(
        !out.chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "a control character reached stdout: {out:?}"
    );
    assert!(
        out.contains(&format!("Label:         \t{shown}\n")),
        "{out}"
    );
    assert!(out.contains(&format!("  0: {shown}\n")), "{out}");
    assert!(
        out.contains(&format!("\tKey description: {shown}\n")),
        "{out}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&ok(nbdcrypt().arg("dump").arg("--json").arg(&img))).unwrap();
    assert_eq!(doc["label"], evil);
    assert_eq!(doc["metadata"]["tokens"]["0"]["type"], evil);

    edit_metadata(&img, |v| v["segments"]["0"]["encryption"] = evil.into());
    let out = run(nbdcrypt().arg("dump").arg(&img));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cipher {shown} is not supported")),
        "{err}"
    );
    assert!(
        !err.chars().any(|c| c.is_control() && c != '\n'),
        "a control character reached stderr: {err:?}"
    );
    assert_eq!(
        err.lines().filter(|l| !l.starts_with("hint:")).count(),
        1,
        "{err:?}"
    );
}

/// A header at the largest seqid: `erase` is refused with exit 1 naming the seqid, before
/// the keyslots are wiped (the image is byte-identical and the passphrase still opens it).
#[test]
fn erase_at_the_largest_seqid_is_refused() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "v.img", &key);
    rewrite_both_copies(&img, &mut |hdr, _| hdr.seqid = u64::MAX);
    let before = file_hash(&img);
    let out = run(nbdcrypt().arg("erase").arg(&img).arg("--batch-mode"));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("seqid 18446744073709551615 is the largest possible"),
        "{err}"
    );
    assert_eq!(
        before,
        file_hash(&img),
        "a refused erase wrote to the image"
    );
    assert!(test_passphrase(&img, &key, &[]).status.success());
}

/// A keyslots area above cryptsetup's 128 MiB limit is refused by every command (the header
/// is outside what cryptsetup accepts), and `header-backup` neither reads it nor creates a file.
#[test]
fn keyslots_area_above_the_limit_is_refused() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = fresh(dir.path(), "v.img", &key);
    let big = 256u64 << 20;
    rewrite_both_copies(&img, &mut |_, md| {
        md.config.keyslots_size = big;
        md.segments.values_mut().next().unwrap().offset = 2 * 16384 + big;
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(2 * 16384 + big + (1 << 20))
        .unwrap();
    let needle = "config.keyslots_size 268435456 is not supported";
    refused(&img, &key, 1, needle);
    let bak = dir.path().join("v.bak");
    let out = run(nbdcrypt()
        .arg("header-backup")
        .arg(&img)
        .arg("--header-backup-file")
        .arg(&bak));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    assert!(!bak.exists());
}

/// A header asking for minutes of KDF work per try (PBKDF2 or digest iterations 2^32-1) is
/// refused at once, naming the slot (or digest) and `--unlock-time-limit`, by every command that
/// unlocks; a digest listing a slot twice or a 1-byte digest value is refused as corrupt.
#[test]
fn hostile_kdf_costs_are_refused_before_running() {
    let dir = tempdir();
    let key = key_file(dir.path());
    type Edit = fn(&mut format::metadata::Metadata);
    let cases: [(&str, Edit, i32, &str); 4] = [
        (
            "slot.img",
            |md| {
                let ks = md.keyslots.values_mut().next().unwrap();
                ks.kdf.as_mut().unwrap().iterations = Some(u32::MAX);
            },
            1,
            "keyslot 0 would take about 429 s per try, above the 60 s limit (--unlock-time-limit)",
        ),
        (
            "digest.img",
            |md| md.digests.values_mut().next().unwrap().iterations = u32::MAX,
            1,
            "digest 0 would take about 429 s per try",
        ),
        (
            "dup.img",
            |md| {
                let d = md.digests.values_mut().next().unwrap();
                d.keyslots = vec!["0".into(); 2000];
            },
            1,
            "names keyslot \"0\" more than once",
        ),
        (
            "short.img",
            |md| md.digests.values_mut().next().unwrap().digest = vec![0],
            1,
            "value is 1 bytes, but a sha256 digest is 32 bytes",
        ),
    ];
    for (name, edit, code, needle) in cases {
        let img = fresh(dir.path(), name, &key);
        rewrite_both_copies(&img, &mut |_, md| edit(md));
        for cmd in ["test-passphrase", "open"] {
            let started = std::time::Instant::now();
            let mut c = nbdcrypt();
            c.arg(cmd).arg(&img).arg("--key-file").arg(&key);
            if cmd == "open" {
                c.arg("--socket").arg(img.with_extension("sock"));
            }
            let out = run(&mut c);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(code), "{name} {cmd}: {err}");
            assert!(
                err.contains(needle),
                "{name} {cmd}: {needle:?} not in {err:?}"
            );
            // Refused before any KDF runs: far below the minutes the KDF would take (10 s
            // leaves room for a loaded machine starting a debug binary).
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{name} {cmd}: took {:?}",
                started.elapsed()
            );
        }
    }
}
