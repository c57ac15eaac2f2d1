//! The data itself is compatible: what we write through the NBD export decrypts with the volume
//! key that `cryptsetup luksDump --dump-volume-key` prints, by an independent AES-XTS (Python
//! `cryptography`, i.e. OpenSSL), at sector sizes 512 and 4096; and ciphertext that independent
//! code writes reads back through our export as the plaintext. Tweak: the 512-byte sector number
//! from the start of the data segment, also for 4096-byte sectors (format-spec.md §6). The same
//! holds with detached headers (`--header`, format-spec.md §1.1), made by cryptsetup or by us.

use crate::common;

use common::*;
use std::path::Path;
use std::process::Command;

const DATA_OFFSET: u64 = 16 << 20;

fn check_volume(img: &Path, key: &Path, sector: u32, dir: &Path) {
    check_volume_with(img, None, key, sector, dir)
}

/// [`check_volume`] of a data file `img` whose header is the detached file `header` (data
/// segment at offset 0), or in `img` itself.
fn check_volume_with(img: &Path, header: Option<&Path>, key: &Path, sector: u32, dir: &Path) {
    let vk = cryptsetup_volume_key_with(img, header, key);
    let data_offset = if header.is_some() { 0 } else { DATA_OFFSET };
    let header_flag: Vec<&std::ffi::OsStr> = match header {
        Some(h) => vec!["--header".as_ref(), h.as_os_str()],
        None => vec![],
    };
    let extra: Vec<&str> = header_flag.iter().map(|s| s.to_str().unwrap()).collect();
    // 1) Write through our export, decrypt independently.
    let plain = pattern(3 << 20, sector as u64);
    let src = dir.join("src.bin");
    std::fs::write(&src, &plain).unwrap();
    let off: u64 = 1 << 20; // an offset where sector numbers are not 0
    {
        let mut srv = Server::start(img, key, &extra);
        // qemu-io writes the file at a given offset of the export.
        let qemu_io = require("qemu-io", "qemu-utils");
        let out = ok(Command::new(&qemu_io).args([
            "-f",
            "raw",
            "-c",
            &format!("write -s {} {off} {}", src.display(), plain.len()),
            &srv.uri(),
        ]));
        assert!(!out.contains("error"), "{out}");
        let (st, err) = srv.stop();
        assert!(st.success(), "server exit {st}: {err}");
    }
    let dec = dir.join("dec.bin");
    ok(xts_python().args([
        "decrypt",
        img.to_str().unwrap(),
        &vk,
        &data_offset.to_string(),
        &sector.to_string(),
        &off.to_string(),
        &format!("{}:{}", dec.display(), plain.len()),
    ]));
    assert!(
        std::fs::read(&dec).unwrap() == plain,
        "independent XTS decryption of what we wrote differs (sector {sector})"
    );
    // The image holds ciphertext, not the plaintext.
    let raw = std::fs::read(img).unwrap();
    let at = (data_offset + off) as usize;
    assert_ne!(&raw[at..at + 4096], &plain[..4096]);

    // 2) Encrypt independently, read through our export.
    let plain2 = pattern(1 << 20, 77 + sector as u64);
    let src2 = dir.join("src2.bin");
    std::fs::write(&src2, &plain2).unwrap();
    let off2: u64 = 8 << 20;
    ok(xts_python().args([
        "encrypt",
        img.to_str().unwrap(),
        &vk,
        &data_offset.to_string(),
        &sector.to_string(),
        &off2.to_string(),
        src2.to_str().unwrap(),
    ]));
    let mut srv = Server::start(img, key, &[&extra[..], &["--read-only"]].concat());
    let got = dir.join("got.bin");
    ok(Command::new("/usr/bin/python3").args([
        "-c",
        "import nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1]); \
         open(sys.argv[2],'wb').write(h.pread(int(sys.argv[3]), int(sys.argv[4])))",
        &srv.uri(),
        got.to_str().unwrap(),
        &plain2.len().to_string(),
        &off2.to_string(),
    ]));
    let (st, err) = srv.stop();
    assert!(st.success(), "server exit {st}: {err}");
    assert!(
        std::fs::read(&got).unwrap() == plain2,
        "our read of independently encrypted data differs (sector {sector})"
    );
}

#[test]
fn cryptsetup_volumes_512_and_4096() {
    let dir = tempdir();
    let key = key_file(dir.path());
    for sector in [512u32, 4096] {
        let img = dir.path().join(format!("cs{sector}.img"));
        cryptsetup_format(&img, &key, 32 << 20, sector, "pbkdf2");
        check_volume(&img, &key, sector, dir.path());
    }
}

#[test]
fn our_volumes_512_and_4096() {
    let dir = tempdir();
    let key = key_file(dir.path());
    for sector in [512u32, 4096] {
        let img = dir.path().join(format!("ours{sector}.img"));
        format_cheap(&img, &key, "32M", sector, "pbkdf2");
        check_volume(&img, &key, sector, dir.path());
    }
}

/// cryptsetup's `luksFormat --header`: we open and serve the data file with its detached
/// header; the bytes agree with an independent XTS under the key cryptsetup dumps.
#[test]
fn cryptsetup_detached_headers_512_and_4096() {
    let dir = tempdir();
    let key = key_file(dir.path());
    for sector in [512u32, 4096] {
        let img = dir.path().join(format!("csd{sector}.img"));
        let hdr = dir.path().join(format!("csd{sector}.hdr"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let mut c = cryptsetup();
        c.args([
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
        ])
        .args(["--sector-size", &sector.to_string(), "--key-file"])
        .arg(&key)
        .arg("--header")
        .arg(&hdr)
        .args(cheap_kdf_args("pbkdf2"))
        .arg(&img);
        ok(&mut c);
        check_volume_with(&img, Some(&hdr), &key, sector, dir.path());
    }
}

/// Our `format --header`: the header file opens under `cryptsetup open --test-passphrase
/// --header`, cryptsetup dumps the volume key, and the data file (only ciphertext, from
/// offset 0, the whole file exported) agrees with an independent XTS under that key.
#[test]
fn our_detached_headers_512_and_4096() {
    let dir = tempdir();
    let key = key_file(dir.path());
    for sector in [512u32, 4096] {
        let img = dir.path().join(format!("od{sector}.img"));
        let hdr = dir.path().join(format!("od{sector}.hdr"));
        let mut c = nbdcrypt();
        c.arg("format")
            .arg(&img)
            .arg("--header")
            .arg(&hdr)
            .args(["--size", "16M", "--pbkdf", "pbkdf2", "--sector-size"])
            .arg(sector.to_string())
            .arg("--key-file")
            .arg(&key)
            .args(cheap_kdf_args("pbkdf2"));
        ok(&mut c);
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
        assert_eq!(std::fs::metadata(&hdr).unwrap().len(), 16 << 20);
        let out = cryptsetup_test_passphrase_header(&img, &hdr, &key);
        assert!(out.status.success(), "cryptsetup: {}", stderr(&out));
        let dump = ok(cryptsetup().arg("luksDump").arg(&hdr));
        assert!(dump.contains("offset: 0 [bytes]"), "{dump}");
        check_volume_with(&img, Some(&hdr), &key, sector, dir.path());
        // The whole data file is the volume.
        let mut srv = Server::start(&img, &key, &["--header", hdr.to_str().unwrap()]);
        let size = ok(nbd_tool("nbdinfo").args(["--size", &srv.uri()]));
        assert_eq!(size.trim(), (16u64 << 20).to_string());
        srv.stop();
    }
}
