//! The serving options of the real binary: `nbdcrypt serve` with several LUKS2 images (nbdinfo
//! `--list`, data kept apart, per-export read-only, one unlock per image and errors naming the
//! export), `--max-connections`, `--pid-file`, systemd socket activation (`LISTEN_FDS`, TCP and
//! Unix, by hand and through `systemd-socket-activate`), and the per-connection log line.

use crate::common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::nbd::{meta_data, name_data, Raw, CMD_DISC, CMD_READ, CMD_WRITE};
use common::nbd::{OPT_GO, OPT_SET_META_CONTEXT, OPT_STRUCTURED_REPLY, REP_ACK};
use common::nbd::{REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA};
use common::*;

/// A cheap LUKS2 image `DIR/NAME.img` of `size` with its own key file `DIR/NAME.key`.
fn volume(dir: &Path, name: &str, size: &str, sector: u32, pass: &[u8]) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&key, pass).unwrap();
    let img = dir.join(format!("{name}.img"));
    format_cheap(&img, &key, size, sector, "pbkdf2");
    (img, key)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn nbdinfo_lists_two_volumes_and_each_keeps_its_own_data() {
    let dir = tempdir();
    let (a, ka) = volume(dir.path(), "A", "20M", 512, b"passphrase of A");
    let (b, kb) = volume(dir.path(), "B", "24M", 4096, b"passphrase of B");
    let mut srv = Server::serve(
        &[("a", &a, &ka), ("b", &b, &kb)],
        &["--read-only=b", "--export-description", "b=backup disk B"],
    );
    let list = ok(nbd_tool("nbdinfo").args(["--list", "--json", &srv.uri()]));
    let v = json(&list);
    let exports = v["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 2, "{list}");
    let (ea, eb) = (&exports[0], &exports[1]);
    assert_eq!(ea["export-name"], "a", "{list}");
    assert_eq!(eb["export-name"], "b", "{list}");
    // Clients read descriptions before they authenticate: no server path unless the
    // operator writes one.
    assert_eq!(ea["description"], "nbdcrypt LUKS2 volume", "{list}");
    assert_eq!(eb["description"], "backup disk B", "{list}");
    let plain = ok(nbd_tool("nbdinfo").args(["--list", &srv.uri()]));
    let described: Vec<&str> = plain
        .lines()
        .filter_map(|l| l.trim().strip_prefix("description:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        described,
        ["nbdcrypt LUKS2 volume", "backup disk B"],
        "{plain}"
    );
    assert_eq!(ea["export-size"], 4u64 << 20);
    assert_eq!(eb["export-size"], 8u64 << 20);
    assert_eq!(ea["is_read_only"], false);
    assert_eq!(eb["is_read_only"], true);
    assert_eq!(ea["block_size_minimum"], 512);
    assert_eq!(eb["block_size_minimum"], 4096);
    // "" is the first export
    let default_uri = srv.uri_for("");
    let size = ok(nbd_tool("nbdinfo").args(["--size", &default_uri]));
    assert_eq!(size.trim(), (4u64 << 20).to_string());

    // data written to a is not visible in b
    let b_before = dir.path().join("b-before.bin");
    ok(nbd_tool("nbdcopy").args([&srv.uri_for("b"), b_before.to_str().unwrap()]));
    let src = dir.path().join("src.bin");
    let data = pattern(4 << 20, 11);
    std::fs::write(&src, &data).unwrap();
    ok(nbd_tool("nbdcopy").args(["--flush", src.to_str().unwrap(), &srv.uri_for("a")]));
    let a_after = dir.path().join("a-after.bin");
    let b_after = dir.path().join("b-after.bin");
    ok(nbd_tool("nbdcopy").args([&srv.uri_for("a"), a_after.to_str().unwrap()]));
    ok(nbd_tool("nbdcopy").args([&srv.uri_for("b"), b_after.to_str().unwrap()]));
    assert!(std::fs::read(&a_after).unwrap() == data, "a reads back");
    let b_now = std::fs::read(&b_after).unwrap();
    assert!(b_now == std::fs::read(&b_before).unwrap(), "b unchanged");
    assert!(b_now[..4 << 20] != data[..], "a's data is not in b");
    // b is read-only, a is not
    let script = r#"
import nbd, sys
for uri in sys.argv[1:]:
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        h.pwrite(b"x" * 4096, 0); print(uri, "written")
    except nbd.Error as e:
        print(uri, "errno", e.errno)
    h.shutdown()
"#;
    let out = ok(Command::new("/usr/bin/python3").args([
        "-c",
        script,
        &srv.uri_for("a"),
        &srv.uri_for("b"),
    ]));
    assert!(
        out.contains(&format!("{} written", srv.uri_for("a"))),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} errno EPERM", srv.uri_for("b"))),
        "{out}"
    );
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    assert!(!srv.socket.exists());
}

#[test]
fn an_export_unlocked_with_a_recovery_key() {
    let dir = tempdir();
    let (a, ka) = volume(dir.path(), "A", "20M", 512, b"passphrase of A");
    let (b, kb) = volume(dir.path(), "B", "20M", 512, b"passphrase of B");
    let mut add = nbdcrypt();
    add.args(["recovery-key", "add"])
        .arg(&b)
        .arg("--key-file")
        .arg(&kb)
        .args(["--pbkdf", "pbkdf2"])
        .args(cheap_kdf_args("pbkdf2"));
    let recovery = ok(&mut add);
    let rk = dir.path().join("B.recovery");
    std::fs::write(&rk, recovery.trim()).unwrap();
    let mut cmd = nbdcrypt();
    cmd.arg("serve")
        .arg("--export")
        .arg(format!("a={}", a.display()))
        .arg("--export")
        .arg(format!("b={}", b.display()))
        .arg("-d")
        .arg(format!("a={}", ka.display()))
        .arg("--recovery-key")
        .arg(format!("b={}", rk.display()))
        .arg("--socket")
        .arg(dir.path().join("rk.sock"));
    let mut srv = Server::launch(cmd, dir.path().join("rk.sock"), "a".into());
    let size = ok(nbd_tool("nbdinfo").args(["--size", &srv.uri_for("b")]));
    assert_eq!(size.trim(), (4u64 << 20).to_string());
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    // a key file and a recovery key for the same export: refused
    let out = serve_output(
        dir.path(),
        &[
            "--export",
            &format!("b={}", b.display()),
            "-d",
            &format!("b={}", kb.display()),
            "--recovery-key",
            &format!("b={}", rk.display()),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("both --key-file and --recovery-key"),
        "{}",
        stderr(&out)
    );
}

/// `nbdcrypt serve ... --socket DIR/serve.sock` without waiting for it.
fn serve_output(dir: &Path, args: &[&str]) -> std::process::Output {
    run(nbdcrypt()
        .arg("serve")
        .args(args)
        .arg("--socket")
        .arg(dir.join("serve.sock")))
}

#[test]
fn a_failing_image_names_its_export_and_nothing_is_served() {
    let dir = tempdir();
    let d = dir.path();
    let (a, ka) = volume(d, "A", "20M", 512, b"passphrase of A");
    let (b, _) = volume(d, "B", "20M", 512, b"passphrase of B");
    let (a, ka, b) = (
        a.to_str().unwrap(),
        ka.to_str().unwrap(),
        b.to_str().unwrap(),
    );
    let a_bytes = std::fs::read(a).unwrap();
    let (ka_arg, kb_wrong) = (format!("a={ka}"), format!("b={ka}"));
    let (ea, eb) = (format!("a={a}"), format!("b={b}"));
    // a unlocks, b does not: exit 2 naming b, the socket never appears
    let out = serve_output(
        d,
        &[
            "--export", &ea, "--export", &eb, "-d", &ka_arg, "-d", &kb_wrong,
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("export b ({b}): No key available")),
        "{err}"
    );
    assert!(!d.join("serve.sock").exists());
    assert!(std::fs::read(a).unwrap() == a_bytes, "A untouched");
    // every image is opened before any passphrase is asked for: a missing c fails with exit 4
    // even though a, first, has no key file (asking for it would read the empty stdin: exit 1)
    let missing = d.join("C.img");
    let ec = format!("c={}", missing.display());
    let kc = format!("c={ka}");
    let out = serve_output(d, &["--export", &ea, "--export", &ec, "-d", &kc]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("export c: cannot use"), "{err}");
    assert!(err.contains("C.img"), "{err}");
    // the same image read-write twice (here through a symlink): a flag mistake (exit 1)
    // naming both exports, not "in use by another process"
    let link = d.join("A-link.img");
    std::os::unix::fs::symlink(a, &link).unwrap();
    let ea2 = format!("a2={}", link.display());
    let ka2 = format!("a2={ka}");
    let out = serve_output(
        d,
        &["--export", &ea, "--export", &ea2, "-d", &ka_arg, "-d", &ka2],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("export a2: ") && err.contains("is already export a of this server"),
        "{err}"
    );
    // flag mistakes: exit 1 before anything is opened
    for (args, needle) in [
        (vec!["--export", &ea, "-d", "z=/k"], "\"z\""),
        (
            vec!["--export", &ea, "--export", &ea],
            "export a is given twice",
        ),
        (vec!["--export", a], "is not NAME=PATH"),
        (vec!["--export", &ea, "--read-only=q"], "\"q\""),
        (vec!["--export", &ea, "-d", &ka_arg, "-d", &ka_arg], "twice"),
        (vec!["--export", &ea, "--export", &eb], "stdin"),
    ] {
        let out = serve_output(d, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn max_connections_closes_the_connection_over_the_limit() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "vol", "20M", 512, PASS);
    let mut srv = Server::start(&img, &key, &["--max-connections", "2"]);
    // the start-up probe's connection may hold a slot for a moment
    let (mut one, mut two) = (
        Raw::connect_when_admitted(&srv.socket, 3),
        Raw::connect_when_admitted(&srv.socket, 3),
    );
    assert_eq!(one.info_or_go(OPT_GO).0, REP_ACK);
    assert_eq!(two.info_or_go(OPT_GO).0, REP_ACK);
    // Both established slots are taken: a third is greeted (handshakes are counted apart)
    // but its GO is refused (NBD_REP_ERR_POLICY) and the connection closed.
    // (three of them, for the rate-limited log below)
    for _ in 0..3 {
        let mut third = Raw::connect(&srv.socket, 3);
        assert_eq!(third.info_or_go(OPT_GO), ((1 << 31) | 2, None));
        assert!(third.closed(), "the third connection is closed");
    }
    // the first two carry on
    one.write(1, 4096, &[9; 4096]);
    assert_eq!(one.reply().unwrap(), (0, 1));
    assert_eq!(two.read(4096, 4096), vec![9; 4096]);
    two.request(0, CMD_DISC, 0, 0, 0);
    assert!(two.closed());
    // a freed slot is reused (the server notices the close asynchronously)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut three = loop {
        let mut r = Raw::connect(&srv.socket, 3);
        if r.info_or_go(OPT_GO).0 == REP_ACK {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the freed slot was never reused"
        );
    };
    assert_eq!(three.read(4096, 4096), vec![9; 4096]);
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    assert!(
        err.contains("connection refused: too many connections (--max-connections)")
            && err.contains("max_connections=2"),
        "the refused connection is logged: {err}"
    );
    // Later refusals within 10 s are only counted for a summary line, not logged one by one.
    assert_eq!(err.matches("connection refused").count(), 1, "{err}");
}

/// SIGTERM `child`, wait, return (success, stderr).
fn term(child: Child) -> (bool, String) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait until `path` exists, failing if `child` exits first.
fn wait_for_file(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("nbdcrypt exited early ({st})");
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pid_file_is_written_once_the_socket_accepts_and_removed_at_exit() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "vol", "20M", 512, PASS);
    let sock = dir.path().join("p.sock");
    let pid = dir.path().join("run/nbdcrypt.pid");
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let open = |pid_file: &Path| {
        let mut c = nbdcrypt();
        c.arg("open").arg(&img).arg("--key-file").arg(&key);
        c.arg("--socket").arg(&sock).arg("--pid-file").arg(pid_file);
        c
    };
    let mut child = open(&pid)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&pid, &mut child);
    // no retry: once the pid file is there, the socket accepts
    assert!(Raw::greeted(&sock));
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap(),
        format!("{}\n", child.id())
    );
    let (ok, err) = term(child);
    assert!(ok, "{err}");
    assert!(!pid.exists(), "pid file removed at exit");
    // a pid file that cannot be written: exit 1 naming it, nothing left listening
    let out = run(&mut open(&dir.path().join("no/such/dir/x.pid")));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write pid file"),
        "{}",
        stderr(&out)
    );
    assert!(!sock.exists());
}

/// Start `nbdcrypt ARGS` the way systemd does: `listener` as fd 3, `LISTEN_FDS=1`,
/// `LISTEN_FDNAMES=nbd` and `LISTEN_PID` = the child's own pid (set by a shell that then
/// execs, keeping its pid).
fn socket_activated(listener: RawFd, listen_pid: Option<&str>, args: &[&str]) -> Child {
    let mut cmd = Command::new("/bin/sh");
    let set_pid = match listen_pid {
        Some(p) => format!("export LISTEN_PID={p}"),
        None => "export LISTEN_PID=$$".into(),
    };
    cmd.arg("-c")
        .arg(format!("{set_pid}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_nbdcrypt"))
        .args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "nbd")
        .env("NBDCRYPT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if listener == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(listener, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn socket-activated nbdcrypt")
}

/// `nbdinfo --size URI`, retried while the server is unlocking (the socket already accepts).
fn size_of(uri: &str, child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = run(nbd_tool("nbdinfo").args(["--size", uri]));
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).trim().to_string();
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("nbdcrypt exited early ({st})");
        }
        assert!(Instant::now() < deadline, "{uri} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn socket_activation_with_an_inherited_tcp_socket() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "act", "20M", 512, PASS);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (img_s, key_s) = (img.to_str().unwrap(), key.to_str().unwrap());
    let mut child = socket_activated(
        listener.as_raw_fd(),
        None,
        &["open", img_s, "--key-file", key_s],
    );
    let size = size_of(&format!("nbd://127.0.0.1:{port}/act"), &mut child);
    assert_eq!(size, (4u64 << 20).to_string());
    let (ok, err) = term(child);
    assert!(ok, "{err}");
    assert!(err.contains("listening listen=fd:3 (nbd)"), "{err}");
    assert!(err.contains(&format!("addr=tcp:127.0.0.1:{port}")), "{err}");
    assert!(
        !err.contains("10809"),
        "no default listener under activation: {err}"
    );
    // --listen/--socket together with activation: refused
    let child = socket_activated(
        listener.as_raw_fd(),
        None,
        &[
            "open",
            img_s,
            "--key-file",
            key_s,
            "--socket",
            "/nonexistent/x",
        ],
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("socket activation"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn socket_activation_with_an_inherited_unix_socket() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "act", "20M", 4096, PASS);
    let path = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let (img_s, key_s) = (img.to_str().unwrap(), key.to_str().unwrap());
    let mut child = socket_activated(
        listener.as_raw_fd(),
        None,
        &[
            "serve",
            "--export",
            &format!("x={img_s}"),
            "-d",
            &format!("x={key_s}"),
        ],
    );
    let uri = format!("nbd+unix:///x?socket={}", path.display());
    assert_eq!(size_of(&uri, &mut child), (4u64 << 20).to_string());
    let (ok, err) = term(child);
    assert!(ok, "{err}");
    assert!(err.contains("listening listen=fd:3 (nbd)"), "{err}");
    assert!(
        path.exists(),
        "the service manager's socket file is left alone"
    );
    // LISTEN_PID of another process: the variables are not for us, --socket is served
    let own = dir.path().join("own.sock");
    let own_s = own.to_str().unwrap();
    let mut child = socket_activated(
        listener.as_raw_fd(),
        Some("1"),
        &["open", img_s, "--key-file", key_s, "--socket", own_s],
    );
    let uri = format!("nbd+unix:///act?socket={own_s}");
    assert_eq!(size_of(&uri, &mut child), (4u64 << 20).to_string());
    let (ok, err) = term(child);
    assert!(ok, "{err}");
    assert!(!err.contains("fd:3"), "{err}");
}

/// systemd's own implementation of the protocol, without systemd running.
#[test]
fn socket_activation_through_systemd_socket_activate() {
    let activate = require("systemd-socket-activate", "systemd");
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "sd", "20M", 512, PASS);
    let path = dir.path().join("sd.sock");
    let mut child = Command::new(activate)
        .arg("--listen")
        .arg(&path)
        .args(["--fdname=nbd-sd", "-E", "NBDCRYPT_LOG=info"])
        .arg(env!("CARGO_BIN_EXE_nbdcrypt"))
        .arg("open")
        .arg(&img)
        .arg("--key-file")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&path, &mut child);
    let uri = format!("nbd+unix:///sd?socket={}", path.display());
    assert_eq!(size_of(&uri, &mut child), (4u64 << 20).to_string());
    let (ok, err) = term(child);
    assert!(ok, "{err}");
    assert!(err.contains("listening listen=fd:3 (nbd-sd)"), "{err}");
}

/// Option data of GO with no information requests.
fn go_data(name: &str) -> Vec<u8> {
    let mut d = name_data(name);
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

#[test]
fn one_log_line_per_connection() {
    let dir = tempdir();
    let (a, ka) = volume(dir.path(), "A", "20M", 512, PASS);
    let (b, kb) = volume(dir.path(), "B", "20M", 512, PASS);
    let socket = dir.path().join("log.sock");
    let mut cmd = nbdcrypt();
    cmd.env("NBDCRYPT_LOG", "info").arg("serve");
    for (n, img, key) in [("a", &a, &ka), ("b", &b, &kb)] {
        cmd.arg("--export")
            .arg(format!("{n}={}", img.display()))
            .arg("-d")
            .arg(format!("{n}={}", key.display()));
    }
    cmd.arg("--socket").arg(&socket);
    let mut srv = Server::launch(cmd, socket.clone(), "a".into());
    // 1: structured replies, base:allocation and GO on b; one WRITE, one READ, DISC
    let mut r = Raw::connect_when_admitted(&socket, 3);
    assert_eq!(r.opt_all(OPT_STRUCTURED_REPLY, &[]).len(), 1);
    let rep = r.opt_all(OPT_SET_META_CONTEXT, &meta_data("b", &["base:allocation"]));
    assert_eq!(rep.len(), 2, "{rep:?}");
    assert_eq!(r.opt_all(OPT_GO, &go_data("b")).last().unwrap().0, REP_ACK);
    r.request(0, CMD_WRITE, 1, 0, 4096);
    std::io::Write::write_all(&mut r.s, &[3; 4096]).unwrap();
    assert_eq!(r.structured_reply()[0].rtype, REPLY_TYPE_NONE);
    r.request(0, CMD_READ, 2, 0, 8192);
    let chunks = r.structured_reply();
    assert_eq!(chunks[0].rtype, REPLY_TYPE_OFFSET_DATA);
    assert_eq!(&chunks[0].payload[8..8 + 4096], &[3; 4096][..]);
    r.request(0, CMD_DISC, 0, 0, 0);
    assert!(r.closed());
    // 2: EXPORT_NAME for an unknown export (hard close)
    let mut r = Raw::connect_when_admitted(&socket, 3);
    r.send_opt(1, b"nope");
    assert!(r.closed());
    // 3: a listing (ends with ABORT)
    ok(nbd_tool("nbdinfo").args(["--list", &srv.uri()]));
    // 4: GO on the default export (a), one simple-reply WRITE, then a hang-up
    let mut r = Raw::connect_when_admitted(&socket, 3);
    assert_eq!(r.opt_all(OPT_GO, &go_data("")).last().unwrap().0, REP_ACK);
    r.write(5, 0, &[1; 512]);
    assert_eq!(r.reply().unwrap(), (0, 5));
    // Hang up, and wait until the server has closed its side too, so that it ended the
    // session on the hang-up before the SIGTERM below (else it may log end=shutdown).
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        r.closed(),
        "the server did not close a connection its client hung up"
    );
    drop(r);
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("connection closed"))
        .collect();
    let peer = format!("peer=unix:{}", socket.display());
    let find = |needles: &[&str]| -> &str {
        lines
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no log line with {needles:?} in:\n{err}"))
    };
    let first = find(&["export=\"b\"", "end=disc"]);
    for field in [
        peer.as_str(),
        "tls=false",
        "structured=true",
        "meta_context=true",
        "bytes_read=8192",
        "bytes_written=4096",
        "requests=3",
        "duration_ms=",
    ] {
        assert!(first.contains(field), "{field} missing in: {first}");
    }
    find(&["export=-", "end=protocol-error", "nope", peer.as_str()]);
    find(&["export=-", "end=abort", "requests=0"]);
    find(&[
        "export=\"a\"",
        "structured=false",
        "meta_context=false",
        "bytes_written=512",
        "requests=1",
        "end=client-closed",
    ]);
    // one line per connection: the start-up probe of `launch` too (it hangs up at once)
    assert!(lines.len() >= 4, "{err}");
    assert!(
        !err.contains(std::str::from_utf8(PASS).unwrap()),
        "no secret in the log"
    );
}

/// SIGHUP (a closed terminal) stops the server as cleanly as SIGTERM (its default action
/// would kill it: no flush, exit 129): exit 0, socket and pid file removed.
#[test]
fn sighup_is_a_clean_stop() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "hup", "20M", 512, PASS);
    let pid = dir.path().join("hup.pid");
    let mut srv = Server::start(&img, &key, &["--pid-file", pid.to_str().unwrap()]);
    let mut r = Raw::connect_when_admitted(&srv.socket, 3);
    assert_eq!(r.opt_all(OPT_GO, &go_data("")).last().unwrap().0, REP_ACK);
    r.write(1, 0, &[9; 4096]);
    assert_eq!(r.reply().unwrap(), (0, 1));
    let (st, err) = srv.stop_with(libc::SIGHUP);
    assert_eq!(st.code(), Some(0), "not killed by the signal: {err}");
    assert!(!pid.exists(), "pid file removed");
    assert!(!srv.socket.exists(), "socket removed");
}

/// A busy port, a socket path another server answers on, and an unwritable pid file are
/// reported before any passphrase is read (here: none could be, stdin is empty) and before any
/// KDF runs.
#[test]
fn listeners_and_pid_file_are_checked_before_the_passphrase() {
    let dir = tempdir();
    let (img, _) = volume(dir.path(), "A", "20M", 512, b"passphrase of A");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let live = dir.path().join("live.sock");
    let _server = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let pid = dir.path().join("no-such-dir/a.pid");
    for (args, needle) in [
        (
            vec!["--listen".into(), busy.clone()],
            "cannot listen on tcp:",
        ),
        (
            vec!["--socket".into(), live.display().to_string()],
            "live.sock",
        ),
        (
            vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--pid-file".into(),
                pid.display().to_string(),
            ],
            "pid file",
        ),
    ] {
        let out = run(nbdcrypt().arg("open").arg(&img).args(&args));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("passphrase"), "{args:?}: asked first: {err}");
    }
}
