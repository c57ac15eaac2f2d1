//! Real NBD clients against the in-process server: nbdinfo, nbdcopy, qemu-io, qemu-img,
//! nbd-client (listing) and libnbd's Python bindings (nbdsh's module). Each test fails with a
//! clear message when its tool is missing.

use crate::common;

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
    for cap in ["can_trim", "can_zero", "can_fast_zero"] {
        assert_eq!(v["exports"][0][cap], false, "{cap} on a read-only export");
    }
    assert_eq!(v["exports"][0]["can_flush"], true);
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

/// TX3/TX18: libnbd negotiates structured replies; `pread_structured` sees OFFSET_DATA chunks
/// that exactly cover the request; a DF read (1 MiB and 32 MiB) is one chunk; errors arrive
/// per proto.md (strict mode off so the bad requests reach the server).
#[test]
fn libnbd_structured_reads_and_df() {
    let srv = TestServer::start(MemExport::new(40 * MIB, 512), false);
    let data = random_bytes(8 * MIB, 11);
    srv.export.data.write().unwrap()[..8 * MIB].copy_from_slice(&data);
    let out = libnbd(&format!(
        r#"
import nbd, errno
h = nbd.NBD()
h.connect_uri("{uri}")
assert h.get_structured_replies_negotiated()
assert h.can_df()
size = h.get_size()

def chunks_of(count, offset, flags=0):
    seen = []
    def cb(buf, off, status, err):
        assert status == nbd.READ_DATA, status
        seen.append((off, len(buf)))
        return 0
    buf = h.pread_structured(count, offset, cb, flags)
    seen.sort()
    pos = offset
    for off, n in seen:
        assert off == pos, (seen, offset, count)
        pos += n
    assert pos == offset + count, (seen, offset, count)
    return buf, len(seen)

expect = open("{src}", "rb").read()
buf, n = chunks_of(4 << 20, 1 << 20)
assert buf == expect[1 << 20:5 << 20]
print("plain chunks", n)
buf, n = chunks_of(1 << 20, 3 << 20, nbd.CMD_FLAG_DF)
assert buf == expect[3 << 20:4 << 20] and n == 1, n
print("df 1M chunks", n)
buf, n = chunks_of(32 << 20, 0, nbd.CMD_FLAG_DF)
assert buf[:8 << 20] == expect and n == 1, n
print("df 32M chunks", n)
h.set_strict_mode(0)  # libnbd refuses unaligned and invalid requests itself otherwise
buf, n = chunks_of(511, 1)
assert buf == expect[1:512]
print("unaligned ok")
for name, f in (
    ("read past end", lambda: h.pread(1024, size - 512)),
    ("read unknown flag", lambda: h.pread(512, 0, 1 << 15)),
    ("structured read past end", lambda: h.pread_structured(1024, size - 512, lambda *a: 0)),
):
    try:
        f()
        print(name, "succeeded")
    except nbd.Error as e:
        print(name, "errno", e.errnum)
assert h.pread(512, 0) == expect[:512]
h.shutdown()
print("ok")
"#,
        uri = srv.uri(),
        src = {
            let p = srv.dir.path().join("expect.bin");
            std::fs::write(&p, &data).unwrap();
            p.display().to_string()
        }
    ));
    assert!(out.contains("df 1M chunks 1"), "{out}");
    assert!(out.contains("df 32M chunks 1"), "{out}");
    assert!(out.contains("read past end errno 22\n"), "{out}");
    assert!(out.contains("read unknown flag errno 22\n"), "{out}");
    assert!(out.contains("structured read past end errno 22\n"), "{out}");
    assert!(out.contains("ok"), "{out}");
    srv.stop();
}

/// HS13/TX16: base:allocation through libnbd, nbdinfo and qemu-img map. Everything is data
/// (status 0) whether written or not, with and without REQ_ONE.
#[test]
fn block_status_reports_all_data_to_real_clients() {
    let srv = TestServer::start(MemExport::new(8 * MIB, 4096), false);
    srv.export.data.write().unwrap()[MIB..2 * MIB].fill(0xee);
    let out = libnbd(&format!(
        r#"
import nbd, errno
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri("{uri}")
listed = []
h.opt_list_meta_context(lambda name: listed.append(name) or 0)
print("listed", listed)
h.add_meta_context("base:allocation")
h.add_meta_context("x-unknown:thing")
h.opt_go()
assert h.can_meta_context("base:allocation")
assert not h.can_meta_context("x-unknown:thing")
size = h.get_size()

def extents(count, offset, flags=0):
    got = []
    def cb(ctx, off, entries, err):
        assert ctx == "base:allocation", ctx
        got.append((off, list(entries)))
        return 0
    h.block_status(count, offset, cb, flags)
    assert len(got) == 1, got
    off, e = got[0]
    assert off == offset
    return e

e = extents(size, 0)
print("whole", e)
assert e == [size, 0], e
e = extents(size, 0, nbd.CMD_FLAG_REQ_ONE)
assert len(e) == 2 and e[0] <= size and e[1] == 0, e
print("req_one", e)
e = extents(1 << 20, 1 << 20)
assert e == [1 << 20, 0], e
e = extents(4096, 1 << 20, nbd.CMD_FLAG_REQ_ONE)
assert e == [4096, 0], e
h.set_strict_mode(0)
try:
    extents(8192, size - 4096)
    print("past end succeeded")
except nbd.Error as ex:
    print("past end errno", ex.errnum)
h.shutdown()
print("ok")
"#,
        uri = srv.uri()
    ));
    assert!(out.contains("listed ['base:allocation']"), "{out}");
    assert!(out.contains("past end errno 22\n"), "{out}");
    assert!(out.contains("ok"), "{out}");

    let v = json(&run_ok(
        Command::new(tool("nbdinfo")).arg("--json").arg(srv.uri()),
    ));
    let ctx = v["exports"][0]["contexts"].as_array().unwrap();
    assert!(ctx.iter().any(|c| c == "base:allocation"), "{v}");
    let map = run_ok(Command::new(tool("nbdinfo")).arg("--map").arg(srv.uri()));
    let lines: Vec<&str> = map.lines().collect();
    assert_eq!(lines.len(), 1, "one extent for the whole export: {map}");
    assert!(
        lines[0].contains("8388608") && lines[0].contains("data"),
        "{map}"
    );

    let qmap = run_ok(
        Command::new(tool("qemu-img"))
            .args(["map", "-f", "raw", "--output=json"])
            .arg(srv.uri()),
    );
    let qv = json(&qmap);
    for e in qv.as_array().unwrap() {
        assert_eq!(e["data"], true, "qemu-img map must see only data: {qmap}");
        assert_eq!(e["zero"], false, "{qmap}");
    }
    srv.stop();
}

/// TX14/TX15/TX17: TRIM leaves the data, CACHE succeeds (unknown flag EINVAL), FAST_ZERO is
/// ENOTSUP without touching data, NO_HOLE zeroing still works; bounds errors per proto.md.
#[test]
fn libnbd_trim_cache_and_fast_zero() {
    let srv = TestServer::start(MemExport::new(4 * MIB, 512), false);
    let out = libnbd(&format!(
        r#"
import nbd, errno
h = nbd.NBD()
h.connect_uri("{uri}")
assert h.can_trim() and h.can_cache() and h.can_fast_zero() and h.can_zero()
size = h.get_size()
pat = bytes((i * 7) & 0xff for i in range(1 << 20))
h.pwrite(pat, 0)
h.trim(1 << 20, 0)
assert h.pread(1 << 20, 0) == pat, "trim changed data"
h.trim(512, 0, nbd.CMD_FLAG_FUA)
h.cache(1 << 20, 0)
try:
    h.zero(1 << 20, 0, nbd.CMD_FLAG_FAST_ZERO)
    print("fast zero succeeded")
except nbd.Error as e:
    print("fast zero errno", e.errnum)
assert h.pread(1 << 20, 0) == pat, "fast zero changed data"
h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 4096) == b"\0" * 4096
h.set_strict_mode(0)
for name, f in (
    ("trim past end", lambda: h.trim(1024, size - 512)),
    ("cache past end", lambda: h.cache(1024, size - 512)),
    ("cache unknown flag", lambda: h.cache(512, 0, 1 << 15)),
    ("zero past end", lambda: h.zero(1024, size - 512)),
):
    try:
        f()
        print(name, "succeeded")
    except nbd.Error as e:
        print(name, "errno", e.errnum)
h.flush()
h.shutdown()
print("ok")
"#,
        uri = srv.uri()
    ));
    for want in [
        "fast zero errno 95\n",
        "trim past end errno 22\n",
        "cache past end errno 22\n",
        "cache unknown flag errno 22\n",
        "zero past end errno 28\n",
        "ok",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    srv.stop();

    let ro = TestServer::start(MemExport::new(MIB, 512), true);
    let out = libnbd(&format!(
        r#"
import nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri("{uri}")
h.cache(4096, 0)
print("cache ok")
try:
    h.trim(4096, 0)
    print("trim succeeded")
except nbd.Error as e:
    print("trim errno", e.errnum)
h.shutdown()
"#,
        uri = ro.uri()
    ));
    assert!(
        out.contains("cache ok") && out.contains("trim errno 1\n"),
        "{out}"
    );
    ro.stop();
}

/// MC1: a write on one connection, FLUSH on another, read back on the other; then nbdcopy
/// with 4 connections (it uses multi-conn now) in and out, compared byte for byte.
#[test]
fn multi_conn_flush_and_nbdcopy_four_connections() {
    let srv = TestServer::start(MemExport::new(72 * MIB, 512), false);
    let out = libnbd(&format!(
        r#"
import nbd
a = nbd.NBD(); a.connect_uri("{uri}")
b = nbd.NBD(); b.connect_uri("{uri}")
assert a.can_multi_conn() and b.can_multi_conn()
a.pwrite(b"\xab" * 65536, 1 << 20)
b.flush()
assert b.pread(65536, 1 << 20) == b"\xab" * 65536
a.shutdown(); b.shutdown()
print("ok")
"#,
        uri = srv.uri()
    ));
    assert!(out.contains("ok"), "{out}");
    let st = run(Command::new(tool("nbdinfo"))
        .args(["--can", "multi-conn"])
        .arg(srv.uri()));
    assert!(st.status.success(), "nbdinfo --can multi-conn must exit 0");

    let nbdcopy = tool("nbdcopy");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    let data = random_bytes(72 * MIB, 99);
    std::fs::write(&src, &data).unwrap();
    run_ok(
        Command::new(&nbdcopy)
            .args(["--connections", "4", "--flush"])
            .arg(&src)
            .arg(srv.uri()),
    );
    assert!(srv.export.snapshot(0, 72 * MIB) == data, "export differs");
    run_ok(
        Command::new(&nbdcopy)
            .args(["--connections", "4"])
            .arg(srv.uri())
            .arg(&dst),
    );
    assert!(std::fs::read(&dst).unwrap() == data, "copy back differs");
    srv.stop();
}
