//! `format --wipe` and `wipe` (format-spec.md §10): the export reads as zeros, the image holds
//! ciphertext everywhere in the data segment (no plaintext zeros, no holes); a wipe stopped by
//! SIGINT leaves a state file and exit 130, and `--resume` continues from there.

use crate::common;

use common::*;
use std::path::Path;

const DATA_OFFSET: u64 = 16 << 20;

/// Every byte of the export reads as zero (through libnbd).
fn export_is_zeros(img: &Path, key: &Path, extra: &[&str]) {
    let mut srv = Server::start(img, key, &[extra, &["--read-only"]].concat());
    let out = ok(std::process::Command::new("/usr/bin/python3").args([
        "-c",
        "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1]); n=h.get_size(); off=0; bad=0\n\
         while off<n:\n  k=min(8<<20,n-off); b=h.pread(k,off)\n  if b.count(0)!=k: bad+=1\n  off+=k\nprint(n, bad)",
        &srv.uri(),
    ]));
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    let v: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(v[0] > 0);
    assert_eq!(v[1], 0, "{} chunks of the export are not zeros", v[1]);
}

/// Number of 4096-byte blocks of the image's data segment within `[from, to)` (volume offsets)
/// that are all zero bytes (never written, or plaintext zeros).
fn zero_blocks(img: &Path, from: u64, to: u64) -> usize {
    let raw = std::fs::read(img).unwrap();
    raw[(DATA_OFFSET + from) as usize..(DATA_OFFSET + to) as usize]
        .chunks(4096)
        .filter(|c| c.iter().all(|b| *b == 0))
        .count()
}

fn format_plain(img: &Path, key: &Path, size: &str, extra: &[&str]) -> String {
    let out = run(nbdcrypt()
        .arg("format")
        .arg(img)
        .args(["--size", size, "--pbkdf", "pbkdf2", "--key-file"])
        .arg(key)
        .args(cheap_kdf_args("pbkdf2"))
        .args(extra));
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn format_wipe_leaves_encrypted_zeros_everywhere() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("w.img");
    let err = format_plain(&img, &key, "40M", &["--wipe"]);
    // The speed is reported against the XTS figure.
    assert!(err.contains("MiB/s XTS encryption alone"), "{err}");
    assert_eq!(zero_blocks(&img, 0, 24 << 20), 0);
    assert!(!dir.path().join("w.img.nbdcrypt-wipe").exists());
    export_is_zeros(&img, &key, &[]);

    // With a detached header: the whole data file is ciphertext and the export zeros.
    let data = dir.path().join("d.img");
    let hdr = dir.path().join("d.hdr");
    let h = hdr.to_str().unwrap();
    format_plain(&data, &key, "8M", &["--header", h, "--wipe"]);
    let raw = std::fs::read(&data).unwrap();
    assert_eq!(raw.len(), 8 << 20);
    assert!(raw.chunks(4096).all(|c| c.iter().any(|b| *b != 0)));
    export_is_zeros(&data, &key, &["--header", h]);
}

#[test]
fn interrupted_wipe_resumes_where_it_stopped() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("big.img");
    let size: u64 = 128 << 20; // volume bytes
    format_plain(&img, &key, "144M", &[]);
    assert_eq!(zero_blocks(&img, 0, size), (size / 4096) as usize);
    // SIGINT (raised by the debug-build hook once 40 MiB are written, through the real handler).
    let out = run(nbdcrypt()
        .arg("wipe")
        .arg(&img)
        .arg("--key-file")
        .arg(&key)
        .env("NBDCRYPT_WIPE_SIGINT_AT", (40u64 << 20).to_string()));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
    let state_path = dir.path().join("big.img.nbdcrypt-wipe");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let done = state["done"].as_u64().unwrap();
    assert!((40 << 20..size).contains(&done), "done {done}");
    assert_eq!(state["size"].as_u64(), Some(size));
    // Up to `done`: ciphertext (no zero block); after it: untouched.
    assert_eq!(zero_blocks(&img, 0, done), 0);
    assert_eq!(
        zero_blocks(&img, done, size),
        ((size - done) / 4096) as usize
    );

    // A state file of another volume is refused.
    let other = dir.path().join("other.img");
    format_plain(&other, &key, "144M", &[]);
    std::fs::copy(&state_path, dir.path().join("other.img.nbdcrypt-wipe")).unwrap();
    let out = run(nbdcrypt()
        .arg("wipe")
        .arg(&other)
        .args(["--resume", "--key-file"])
        .arg(&key));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("another volume"), "{}", stderr(&out));

    // Resume: it starts at `done` and finishes the rest.
    let out = run(nbdcrypt()
        .arg("wipe")
        .arg(&img)
        .args(["--resume", "--key-file"])
        .arg(&key));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("at {done} of {size} bytes")),
        "{}",
        stderr(&out)
    );
    assert!(!state_path.exists());
    assert_eq!(zero_blocks(&img, 0, size), 0);
    export_is_zeros(&img, &key, &[]);
}

/// A symlink planted at the wipe's state or temporary file name (another user's, in a shared
/// directory) is never written through: the file it points to is unchanged.
#[test]
fn wipe_does_not_write_through_a_planted_symlink() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("s.img");
    format_plain(&img, &key, "20M", &[]);
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    let tmp = dir.path().join("s.img.nbdcrypt-wipe.tmp");
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    let out = run(nbdcrypt().arg("wipe").arg(&img).arg("--key-file").arg(&key));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    assert!(std::fs::symlink_metadata(&tmp).unwrap().is_symlink());
    assert!(!dir.path().join("s.img.nbdcrypt-wipe").exists());
}
