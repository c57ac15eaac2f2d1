//! Real NBD clients against the in-process server: nbdinfo, nbdcopy, qemu-io, qemu-img,
//! nbd-client (listing) and libnbd's Python bindings (nbdsh's module). Each test fails with a
//! clear message when its tool is missing.

mod common {
    pub mod nbd;
}

use std::process::Command;
use std::sync::atomic::Ordering;

use common::nbd::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{s}"))
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough for copy tests.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}

#[test]
fn nbdinfo_json_describes_the_export() {
    let nbdinfo = tool("nbdinfo");
    let srv = TestServer::start(MemExport::new(3 * MIB, 512), false);
    let v = json(&run_ok(Command::new(&nbdinfo).arg("--json").arg(srv.uri())));
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["structured"], true);
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], EXPORT);
    assert_eq!(e["export-size"], 3 * MIB as u64);
    assert_eq!(e["is_read_only"], false);
    for (k, want) in [
        ("can_flush", true),
        ("can_fua", true),
        ("can_zero", true),
        ("can_trim", true),
        ("can_multi_conn", true),
        ("can_cache", true),
        ("can_df", true),
        ("can_fast_zero", true),
    ] {
        assert_eq!(e[k], want, "{k} in {e}");
    }
    // the default export "" selects the same export
    let v = json(&run_ok(
        Command::new(&nbdinfo).arg("--json").arg(srv.uri_for("")),
    ));
    assert_eq!(v["exports"][0]["export-size"], 3 * MIB as u64);
    srv.stop();
}

#[test]
fn nbdinfo_read_only_and_unknown_export() {
    let nbdinfo = tool("nbdinfo");
    let srv = TestServer::start(MemExport::new(MIB, 512), true);
    let v = json(&run_ok(Command::new(&nbdinfo).arg("--json").arg(srv.uri())));
    assert_eq!(v["exports"][0]["is_read_only"], true);
    let out = run(Command::new(&nbdinfo).arg(srv.uri_for("nope")));
    assert!(!out.status.success(), "unknown export must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No such file or directory") && err.contains("nope"),
        "expected ERR_UNKNOWN (libnbd reports ENOENT) for export nope: {err}"
    );
    srv.stop();
}

#[test]
fn nbdinfo_block_sizes() {
    let nbdinfo = tool("nbdinfo");
    for min in [512u32, 4096] {
        let srv = TestServer::start(MemExport::new(MIB, min), false);
        let out = run_ok(Command::new(&nbdinfo).arg(srv.uri()));
        for want in [
            format!("block_size_minimum: {min}"),
            "block_size_preferred: 4096".to_string(),
            "block_size_maximum: 33554432".to_string(),
        ] {
            assert!(out.contains(&want), "missing {want:?} in:\n{out}");
        }
        srv.stop();
    }
}

#[test]
fn listing_with_nbdinfo_and_nbd_client() {
    let nbdinfo = tool("nbdinfo");
    let nbd_client = tool("nbd-client");
    let srv = TestServer::start(MemExport::new(MIB, 512), false);
    let list_uri = format!("nbd+unix://?socket={}", srv.sock.display());
    let v = json(&run_ok(
        Command::new(&nbdinfo)
            .args(["--list", "--json"])
            .arg(&list_uri),
    ));
    let exports = v["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 1, "{v}");
    assert_eq!(exports[0]["export-name"], EXPORT);
    assert_eq!(exports[0]["export-size"], MIB as u64);
    let plain = run_ok(Command::new(&nbdinfo).arg("--list").arg(&list_uri));
    assert!(plain.contains("export=\"vol\""), "{plain}");
    let out = run_ok(
        Command::new(&nbd_client)
            .args(["-l", "-unix"])
            .arg(&srv.sock),
    );
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("vol")),
        "nbd-client -l: {out}"
    );
    srv.stop();
}

#[test]
fn nbdcopy_64mib_round_trip() {
    let nbdcopy = tool("nbdcopy");
    let srv = TestServer::start(MemExport::new(72 * MIB, 512), false);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    let data = random_bytes(64 * MIB, 42);
    std::fs::write(&src, &data).unwrap();
    run_ok(
        Command::new(&nbdcopy)
            .arg("--flush")
            .arg(&src)
            .arg(srv.uri()),
    );
    assert!(
        srv.export.snapshot(0, 64 * MIB) == data,
        "export differs from the source"
    );
    run_ok(Command::new(&nbdcopy).arg(srv.uri()).arg(&dst));
    let back = std::fs::read(&dst).unwrap();
    assert_eq!(back.len(), 72 * MIB);
    assert!(back[..64 * MIB] == data[..], "copy back differs");
    assert!(back[64 * MIB..].iter().all(|&b| b == 0));
    assert!(srv.export.flushes.load(Ordering::SeqCst) > 0);
    srv.stop();
}

fn qemu_io(srv: &TestServer, cmds: &[&str]) -> String {
    let mut c = Command::new(tool("qemu-io"));
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(srv.uri());
    let out = run(&mut c);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qemu-io failed: {stdout}\n{stderr}");
    assert!(
        !stdout.contains("Pattern verification failed") && !stderr.contains("failed"),
        "qemu-io reported a failure:\n{stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn qemu_io_unaligned_and_zeroes() {
    let srv = TestServer::start(MemExport::new(8 * MIB, 512), false);
    srv.export.data.write().unwrap()[2 * MIB..3 * MIB].fill(0x99);
    let out = qemu_io(
        &srv,
        &[
            "write -P 0x55 1 511",
            "read -P 0x55 1 511",
            "read -P 0 0 1",
            "read -P 0 512 512",
            "write -P 0xab 4095 2",
            "read -P 0xab 4095 2",
            "read -P 0x99 2M 1M",
            "write -z 2M 1M",
            "read -P 0 2M 1M",
            "flush",
        ],
    );
    assert_eq!(out.matches("wrote").count(), 3, "{out}");
    assert_eq!(out.matches("read ").count(), 6, "{out}");
    let mut want = vec![0u8; 4097];
    want[1..512].fill(0x55);
    want[4095..4097].fill(0xab);
    assert_eq!(srv.export.snapshot(0, 4097), want);
    assert!(srv.export.snapshot(2 * MIB, MIB).iter().all(|&b| b == 0));
    // qemu-io writes with FUA by default (writethrough)
    assert!(srv.export.fua_writes.load(Ordering::SeqCst) > 0);
    // a wrong pattern is detected, so the checks above can fail
    let mut c = Command::new(tool("qemu-io"));
    c.args(["-f", "raw", "-c", "read -P 0x77 1 511"])
        .arg(srv.uri());
    let o = run(&mut c);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("Pattern verification failed"), "{all}");
    srv.stop();
}

#[test]
fn qemu_img_convert_into_the_export() {
    let qemu_img = tool("qemu-img");
    let srv = TestServer::start(MemExport::new(16 * MIB, 512), false);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let mut data = random_bytes(16 * MIB, 7);
    data[5 * MIB..9 * MIB].fill(0); // a zero run qemu-img may send as WRITE_ZEROES
    srv.export.data.write().unwrap().fill(0xFF);
    std::fs::write(&src, &data).unwrap();
    run_ok(
        Command::new(&qemu_img)
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(srv.uri()),
    );
    assert!(
        srv.export.snapshot(0, 16 * MIB) == data,
        "export differs after convert"
    );
    run_ok(
        Command::new(&qemu_img)
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(srv.uri()),
    );
    let info = run_ok(
        Command::new(&qemu_img)
            .args(["info", "-f", "raw"])
            .arg(srv.uri()),
    );
    assert!(info.contains("16 MiB"), "{info}");
    srv.stop();
}

/// Run a Python snippet with libnbd bound as `h`, connected to `uri` (opt mode off).
fn libnbd(script: &str) -> String {
    let py = python();
    let probe = run(Command::new(&py).args(["-c", "import nbd"]));
    assert!(
        probe.status.success(),
        "python3-libnbd (module nbd) is not installed"
    );
    run_ok(Command::new(&py).args(["-c", script]))
}

#[test]
fn libnbd_info_then_go_and_read_only_errors() {
    let srv = TestServer::start(MemExport::new(4 * MIB, 4096), false);
    let out = libnbd(&format!(
        r#"
import nbd
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri("{uri}")
h.opt_info()
a = (h.get_size(), h.can_flush(), h.can_fua(), h.can_zero(), h.get_block_size(nbd.SIZE_MINIMUM))
h.opt_go()
b = (h.get_size(), h.can_flush(), h.can_fua(), h.can_zero(), h.get_block_size(nbd.SIZE_MINIMUM))
assert a == b, (a, b)
print("info==go", a)
h.pwrite(b"\x42" * 8192, 4096, nbd.CMD_FLAG_FUA)
h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE)
buf = h.pread(8192, 4096)
assert buf[:4096] == b"\0" * 4096 and buf[4096:] == b"\x42" * 4096, "zero/no-hole"
h.flush()
h.shutdown()
print("ok")
"#,
        uri = srv.uri()
    ));
    assert!(
        out.contains("info==go (4194304, True, True, True, 4096)"),
        "{out}"
    );
    assert!(out.contains("ok"), "{out}");
    srv.stop();

    let ro = TestServer::start(MemExport::new(MIB, 512), true);
    let out = libnbd(&format!(
        r#"
import nbd, errno
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri("{uri}")
assert h.is_read_only()
assert h.pread(512, 0) == b"\0" * 512
for name, f in (("pwrite", lambda: h.pwrite(b"x" * 512, 0)), ("zero", lambda: h.zero(512, 0))):
    try:
        f()
        print(name, "succeeded")
    except nbd.Error as e:
        print(name, "errno", e.errnum)
h.flush()
print("flush ok")
h.shutdown()
"#,
        uri = ro.uri()
    ));
    assert!(out.contains("pwrite errno 1\n"), "{out}");
    assert!(out.contains("zero errno 1\n"), "{out}");
    assert!(out.contains("flush ok"), "{out}");
    ro.stop();
}
