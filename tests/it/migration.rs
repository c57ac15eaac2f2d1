//! docs/migration.md, run: a QEMU `luks` (LUKS1) volume served by `qemu-nbd --image-opts
//! driver=luks` is copied with nbdcopy into a new nbdcrypt volume with a detached header and
//! reads back identical; `cryptsetup convert --type luks2` of a qemu volume is refused (so the
//! guide's copy is needed), and of a cryptsetup LUKS1 volume opens here.

use crate::common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// All bytes of an NBD export.
fn read_all(uri: &str, dir: &Path, name: &str) -> Vec<u8> {
    let out = dir.join(name);
    ok(nbd_tool("nbdcopy").arg(uri).arg(&out));
    std::fs::read(out).unwrap()
}

#[test]
fn qemu_luks_volume_copied_into_nbdcrypt() {
    let dir = tempdir();
    let d = dir.path();
    let qkey = d.join("qkey.txt");
    std::fs::write(&qkey, "qemupass").unwrap();
    let q = d.join("q.luks");
    let secret = format!("secret,id=sec0,file={}", qkey.display());
    let opts = format!("driver=luks,key-secret=sec0,file.filename={}", q.display());
    // qemu-img times PBKDF2 by the thread's CPU time and gives up with "Unable to get accurate
    // CPU usage" when its first round reads 0 ms (tick-based accounting on a fast CPU): a
    // spurious failure of the peer, so that one message is retried.
    let create = || {
        run(Command::new(require("qemu-img", "qemu-utils"))
            .args(["create", "-f", "luks", "--object", &secret, "-o"])
            .arg("key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256,iter-time=10")
            .arg(&q)
            .arg("64M"))
    };
    let mut out = create();
    for _ in 0..5 {
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("Unable to get accurate CPU usage")
        {
            break;
        }
        out = create();
    }
    assert!(
        out.status.success(),
        "qemu-img create -f luks failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(Command::new(require("qemu-io", "qemu-utils"))
        .args(["--object", &secret, "--image-opts", &opts])
        .args(["-c", "write -P 0xab 1M 4M", "-c", "write -P 0x5c 60M 1M"]));
    // The guide's reason: cryptsetup cannot convert QEMU's LUKS1 layout.
    let copy = d.join("q2.luks");
    std::fs::copy(&q, &copy).unwrap();
    let out = run(cryptsetup()
        .args(["convert", "--type", "luks2", "--batch-mode"])
        .arg(&copy));
    assert!(
        !out.status.success(),
        "cryptsetup converted a qemu LUKS1 volume"
    );

    let key = key_file(d);
    let img = d.join("new.img");
    let hdr = d.join("new.hdr");
    ok(nbdcrypt()
        .arg("format")
        .arg(&img)
        .arg("--header")
        .arg(&hdr)
        .args(["--size", "64M", "--pbkdf", "pbkdf2", "--key-file"])
        .arg(&key)
        .args(cheap_kdf_args("pbkdf2")));

    let qsock = d.join("q.sock");
    let mut qemu_nbd = Command::new(require("qemu-nbd", "qemu-utils"))
        .args([
            "--object",
            &secret,
            "--image-opts",
            &opts,
            "--read-only",
            "--persistent",
        ])
        .arg(format!("--socket={}", qsock.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null()) // "Broken pipe" when nbdcopy hangs up
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&qsock).is_err() {
        assert!(Instant::now() < deadline, "qemu-nbd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let quri = format!("nbd+unix:///?socket={}", qsock.display());
    let mut srv = Server::start(&img, &key, &["--header", hdr.to_str().unwrap()]);
    ok(nbd_tool("nbdcopy").arg(&quri).arg(srv.uri()));
    let old = read_all(&quri, d, "old.raw");
    let new = read_all(&srv.uri(), d, "new.raw");
    let _ = qemu_nbd.kill();
    let _ = qemu_nbd.wait();
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    assert_eq!(old.len(), 64 << 20);
    assert!(old == new, "the copy differs from the qemu volume");
    assert!(new[1 << 20..5 << 20].iter().all(|b| *b == 0xab));
    assert!(new[60 << 20..61 << 20].iter().all(|b| *b == 0x5c));
    let out = cryptsetup_test_passphrase_header(&img, &hdr, &key);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn cryptsetup_luks1_converted_opens() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("l1.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    ok(cryptsetup()
        .args(["luksFormat", "--type", "luks1", "--batch-mode"])
        .args(["--pbkdf-force-iterations", "1000", "--key-file"])
        .arg(&key)
        .arg(&img));
    // LUKS1 is refused by name, then converted as the guide says.
    let out = test_passphrase(&img, &key, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    ok(cryptsetup()
        .args(["convert", "--type", "luks2", "--batch-mode"])
        .arg(&img));
    let out = test_passphrase(&img, &key, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Key slot 0 unlocked."));
}
