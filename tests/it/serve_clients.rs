//! Real NBD clients against a running `nbdcrypt open`: nbdinfo, nbdcopy, qemu-io, qemu-img,
//! nbdsh and nbd-client's list mode (the raw-socket probe runs in the module `nbd_probe`).

use crate::common;

use common::*;
use std::path::Path;
use std::process::Command;

fn volume(
    dir: &Path,
    name: &str,
    size: &str,
    sector: u32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = key_file(dir);
    let img = dir.join(name);
    format_cheap(&img, &key, size, sector, "pbkdf2");
    (img, key)
}

#[test]
fn nbdinfo_reports_size_and_block_sizes() {
    let dir = tempdir();
    for sector in [512u32, 4096] {
        let (img, key) = volume(dir.path(), &format!("v{sector}.img"), "48M", sector);
        let mut srv = Server::start(&img, &key, &[]);
        let json = ok(nbd_tool("nbdinfo").args(["--json", &srv.uri()]));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["protocol"], "newstyle-fixed", "{json}");
        let e = &v["exports"][0];
        assert_eq!(e["export-size"], 32u64 << 20, "{json}");
        assert_eq!(e["export-name"], format!("v{sector}"));
        assert_eq!(e["is_read_only"], false);
        assert_eq!(e["can_flush"], true);
        assert_eq!(e["can_fua"], true);
        assert_eq!(e["can_zero"], true);
        let plain = ok(nbd_tool("nbdinfo").arg(srv.uri()));
        assert!(
            plain.contains(&format!("block_size_minimum: {sector}")),
            "{plain}"
        );
        assert!(plain.contains("block_size_preferred: 4096"), "{plain}");
        assert!(plain.contains("block_size_maximum: 33554432"), "{plain}");
        // The default export "" is the same volume; LIST names it.
        let default_uri = format!("nbd+unix:///?socket={}", srv.socket.display());
        let size = ok(nbd_tool("nbdinfo").args(["--size", &default_uri]));
        assert_eq!(size.trim(), (32u64 << 20).to_string());
        let list = ok(nbd_tool("nbdinfo").args(["--list", "--json", &srv.uri()]));
        assert!(
            list.contains(&format!("\"export-name\": \"v{sector}\"")),
            "{list}"
        );
        // No server path in what any client can read before authenticating.
        let v: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(
            v["exports"][0]["description"], "nbdcrypt LUKS2 volume",
            "{list}"
        );
        let (st, err) = srv.stop();
        assert!(st.success(), "{err}");
    }
}

#[test]
fn nbdcopy_64mib_round_trip_and_restart() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "big.img", "81M", 4096);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, pattern(64 << 20, 42)).unwrap();
    let mut srv = Server::start(&img, &key, &[]);
    ok(nbd_tool("nbdcopy").args(["--flush", src.to_str().unwrap(), &srv.uri()]));
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    // Restart: the data survived and reads back identically.
    let mut srv = Server::start(&img, &key, &[]);
    let out = dir.path().join("out.bin");
    ok(nbd_tool("nbdcopy").args([&srv.uri(), out.to_str().unwrap()]));
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    let got = std::fs::read(&out).unwrap();
    assert_eq!(
        got.len(),
        65 << 20,
        "the export is the image minus the 16 MiB header"
    );
    assert!(
        got[..64 << 20] == std::fs::read(&src).unwrap()[..],
        "nbdcopy round trip differs"
    );
}

#[test]
fn qemu_io_odd_offsets_and_qemu_img_convert() {
    let dir = tempdir();
    let qemu_io = require("qemu-io", "qemu-utils");
    for sector in [512u32, 4096] {
        let (img, key) = volume(dir.path(), &format!("q{sector}.img"), "24M", sector);
        let srv = Server::start(&img, &key, &[]);
        let out = ok(Command::new(&qemu_io).args([
            "-f",
            "raw",
            "-c",
            "write -z 0 64k",
            "-c",
            "write -P 0x55 1 511",
            "-c",
            "write -P 0x66 4095 2",
            "-c",
            "write -P 0x77 5000 10000",
            "-c",
            "flush",
            "-c",
            "read -P 0 0 1",
            "-c",
            "read -P 0x55 1 511",
            "-c",
            "read -P 0 512 3583",
            "-c",
            "read -P 0x66 4095 2",
            "-c",
            "read -P 0 4097 903",
            "-c",
            "read -P 0x77 5000 10000",
            "-c",
            "read -P 0 15000 1000",
            "-c",
            "write -z 1M 1M",
            "-c",
            "read -P 0 1M 1M",
            &srv.uri(),
        ]));
        assert!(!out.contains("Pattern verification failed"), "{out}");
        assert!(!out.contains("error"), "{out}");
        assert_eq!(out.matches("\nread ").count(), 8, "{out}");
        drop(srv);
    }
    // qemu-img convert a raw file into the export and compare.
    let (img, key) = volume(dir.path(), "conv.img", "24M", 512);
    let raw = dir.path().join("raw.bin");
    std::fs::write(&raw, pattern(8 << 20, 9)).unwrap();
    let srv = Server::start(&img, &key, &[]);
    let qemu_img = require("qemu-img", "qemu-utils");
    ok(Command::new(&qemu_img).args([
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        raw.to_str().unwrap(),
        &srv.uri(),
    ]));
    let out = dir.path().join("back.bin");
    ok(nbd_tool("nbdcopy").args([&srv.uri(), out.to_str().unwrap()]));
    let back = std::fs::read(&out).unwrap();
    assert!(back[..8 << 20] == std::fs::read(&raw).unwrap()[..]);
}

/// Interleaved 512-byte writes from several connections into the same 4096-byte sectors: each
/// is a read-modify-write, and none may be lost.
#[test]
fn concurrent_partial_sector_writes_lose_nothing() {
    partial_sector_writes_from_4_connections(&[]);
}

/// The same with `--inline-limit 0`: every request on the blocking pool, many at once per
/// connection (the module `nbd_server` checks that path is taken), and still nothing lost.
#[test]
fn inline_limit_zero_serves_pipelined_writes_and_reads() {
    partial_sector_writes_from_4_connections(&["--inline-limit", "0"]);
}

/// 2048 pipelined 512-byte writes over 4 connections into 4096-byte sectors of a server
/// started with `extra` flags, then one read of all of them; fails on any lost write.
fn partial_sector_writes_from_4_connections(extra: &[&str]) {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "rmw.img", "20M", 4096);
    let srv = Server::start(&img, &key, extra);
    let script = r#"
import nbd, sys, threading
uri = sys.argv[1]
N, CONNS = 2048, 4
def writer(k):
    h = nbd.NBD(); h.set_strict_mode(0); h.set_request_structured_replies(False); h.connect_uri(uri)
    cookies = []
    for i in range(k, N, CONNS):
        cookies.append(h.aio_pwrite(bytes([i % 251 + 1]) * 512, i * 512))
        while h.aio_in_flight() > 32:
            h.poll(-1)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        h.aio_command_completed(c)
    h.shutdown()
ts = [threading.Thread(target=writer, args=(k,)) for k in range(CONNS)]
[t.start() for t in ts]; [t.join() for t in ts]
h = nbd.NBD(); h.connect_uri(uri)
data = h.pread(N * 512, 0)
bad = [i for i in range(N) if data[i*512:(i+1)*512] != bytes([i % 251 + 1]) * 512]
print("lost", len(bad), bad[:10])
sys.exit(1 if bad else 0)
"#;
    let out = ok(Command::new("/usr/bin/python3").args(["-c", script, &srv.uri()]));
    assert!(out.contains("lost 0"), "{out}");
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "ro.img", "20M", 512);
    let srv = Server::start(&img, &key, &["--read-only"]);
    let script = r#"
import nbd, sys
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(sys.argv[1])
assert h.is_read_only()
h.pread(4096, 0); h.flush()
try:
    h.pwrite(b"x" * 512, 0); print("write succeeded")
except nbd.Error as e:
    print("errno", e.errno)
"#;
    let out = ok(Command::new("/usr/bin/python3").args(["-c", script, &srv.uri()]));
    assert!(out.contains("errno EPERM"), "EPERM expected: {out}");
}

#[test]
fn tcp_listener_and_nbd_client_list() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "tcp.img", "20M", 512);
    let port = free_port();
    let mut child = nbdcrypt()
        .arg("open")
        .arg(&img)
        .arg("--key-file")
        .arg(&key)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .spawn()
        .unwrap();
    let uri = format!("nbd://127.0.0.1:{port}/tcp");
    let mut tries = 0;
    let size = loop {
        let o = run(nbd_tool("nbdinfo").args(["--size", &uri]));
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).trim().to_string();
        }
        tries += 1;
        assert!(tries < 300, "server on port {port} never answered");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(size, (4u64 << 20).to_string());
    let list = ok(Command::new(require("nbd-client", "nbd-client")).args([
        "-l",
        "127.0.0.1",
        &port.to_string(),
    ]));
    assert!(list.contains("tcp"), "{list}");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success(), "SIGINT must exit 0");
}

/// Structured replies, block status, TRIM, FAST_ZERO and multi-conn through the whole stack:
/// `nbdcopy --connections 4` in and out (it uses multi-conn when advertised), block status
/// reports the whole volume as data, and TRIM / FAST_ZERO leave even the ciphertext alone.
#[test]
fn multi_conn_copy_block_status_and_no_op_trim_on_a_volume() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "mc.img", "81M", 4096);
    let src = dir.path().join("src.bin");
    let data = pattern(65 << 20, 7);
    std::fs::write(&src, &data).unwrap();
    let mut srv = Server::start(&img, &key, &[]);
    let can = run(nbd_tool("nbdinfo").args(["--can", "multi-conn", &srv.uri()]));
    assert!(can.status.success(), "multi-conn must be advertised");
    ok(nbd_tool("nbdcopy").args([
        "--connections",
        "4",
        "--flush",
        src.to_str().unwrap(),
        &srv.uri(),
    ]));
    let out = dir.path().join("out.bin");
    ok(nbd_tool("nbdcopy").args(["--connections", "4", &srv.uri(), out.to_str().unwrap()]));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "4-connection round trip differs"
    );

    let before = std::fs::read(&img).unwrap();
    let script = r#"
import nbd, sys
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
assert h.get_structured_replies_negotiated() and h.can_df() and h.can_multi_conn()
size = h.get_size()
got = []
h.block_status(size, 0, lambda ctx, off, e, err: got.append(list(e)) or 0)
print("extents", got)
h.trim(1 << 20, 0)
try:
    h.zero(1 << 20, 1 << 20, nbd.CMD_FLAG_FAST_ZERO); print("fast zero succeeded")
except nbd.Error as e:
    print("fast zero errno", e.errno)
h.cache(1 << 20, 0)
n = []
buf = h.pread_structured(1 << 20, 0, lambda b, o, s, e: n.append(len(b)) or 0, nbd.CMD_FLAG_DF)
print("df chunks", len(n))
h.flush()
h.shutdown()
"#;
    let out = ok(Command::new("/usr/bin/python3").args(["-c", script, &srv.uri()]));
    assert!(
        out.contains(&format!("extents [[{}, 0]]", 65u64 << 20)),
        "{out}"
    );
    assert!(out.contains("fast zero errno ENOTSUP"), "{out}");
    assert!(out.contains("df chunks 1"), "{out}");
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    assert!(
        std::fs::read(&img).unwrap() == before,
        "TRIM (discard ignore) and FAST_ZERO must not change the image"
    );
}
