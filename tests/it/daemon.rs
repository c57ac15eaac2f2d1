//! Operating nbdcrypt as a daemon: `--fork` (the command returns once the socket accepts and
//! the pid file is written; errors before that are the command's), `--log-format json`, the
//! kernel attach's errors on a host without the `nbd` module (`open --connect`, `close`), and
//! the systemd units of `contrib/systemd/` started the way systemd starts them.
//!
//! The kernel attach itself (`open --connect` then `close`, netlink and ioctls) needs the `nbd`
//! module and root: the VM test (`vm-tests/run.sh`, phase 4) covers it.

use crate::common;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A formatted 20 MiB image (4 MiB volume) and its key file in `dir`.
fn volume(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let img = dir.join(format!("{name}.img"));
    let key = key_file(dir);
    format_cheap(&img, &key, "20M", 512, "pbkdf2");
    (img, key)
}

/// Run `cmd` with stderr to a file (a forked server keeps stderr open, so a pipe would never
/// reach end of file); returns the output with that stderr.
fn run_logged(cmd: &mut Command, log: &Path) -> Output {
    let err = File::create(log).unwrap();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Output {
        status,
        stdout: vec![],
        stderr: std::fs::read(log).unwrap(),
    }
}

/// Whether `pid` runs (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// SIGTERM `pid` (not our child: its parent exited) and wait until it is gone.
fn terminate(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still runs 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn nbdinfo_size(uri: &str) -> Output {
    run(nbd_tool("nbdinfo").args(["--size", uri]))
}

/// `open --fork` returns 0 only once the socket accepts and the pid file names the
/// background server: the first connection right after it succeeds, without any retry.
#[test]
fn fork_returns_once_the_socket_accepts() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "f");
    let (sock, pid_file, log) = (
        dir.path().join("f.sock"),
        dir.path().join("f.pid"),
        dir.path().join("f.log"),
    );
    let out = run_logged(
        nbdcrypt()
            .env("NBDCRYPT_LOG", "info")
            .arg("open")
            .arg(&img)
            .arg("--key-file")
            .arg(&key)
            .arg("--socket")
            .arg(&sock)
            .arg("--fork")
            .arg("--pid-file")
            .arg(&pid_file),
        &log,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the pid file exists when --fork returns")
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid), "the background server {pid} runs");
    assert_ne!(pid, std::process::id() as i32);
    let size = nbdinfo_size(&format!("nbd+unix:///f?socket={}", sock.display()));
    assert!(size.status.success(), "first connection: {}", stderr(&size));
    assert_eq!(String::from_utf8_lossy(&size.stdout).trim(), "4194304");
    // Detached: its own session, stdin on /dev/null.
    let sid = unsafe { libc::getsid(pid) };
    assert_eq!(sid, pid, "the background server leads its own session");
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert_eq!(stdin, Path::new("/dev/null"));
    terminate(pid);
    assert!(!pid_file.exists(), "pid file removed at exit");
    assert!(!sock.exists(), "socket removed at exit");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("stopped; keys wiped"), "{log}");
}

/// Errors before readiness are the command's: its exit code and message, no server left.
#[test]
fn fork_reports_errors_before_readiness() {
    let dir = tempdir();
    let (img, _) = volume(dir.path(), "e");
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, b"wrong passphrase").unwrap();
    let sock = dir.path().join("e.sock");
    let pid_file = dir.path().join("e.pid");
    let log = dir.path().join("e.log");
    let open = |key: &Path, sock: &Path| {
        let mut c = nbdcrypt();
        c.arg("open")
            .arg(&img)
            .arg("--key-file")
            .arg(key)
            .arg("--socket")
            .arg(sock)
            .arg("--fork")
            .arg("--pid-file")
            .arg(&pid_file);
        c
    };
    let out = run_logged(&mut open(&bad, &sock), &log);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("No key available with this passphrase"),
        "{}",
        stderr(&out)
    );
    assert!(!pid_file.exists());
    // A path that is not a socket: refused after the unlock, before readiness.
    let key = dir.path().join("key");
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"x").unwrap();
    let out = run_logged(&mut open(&key, &file), &log);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a socket"), "{}", stderr(&out));
    assert!(!pid_file.exists());
    // No background server was left holding the image: it opens again at once.
    let mut srv = Server::start(&img, &key, &[]);
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
}

/// `--log-format json`: every log line is one JSON object with level and message; the
/// passphrase appears nowhere.
#[test]
fn log_format_json() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "j");
    let mut cmd = nbdcrypt();
    cmd.env("NBDCRYPT_LOG", "info")
        .args(["--log-format", "json", "open"])
        .arg(&img)
        .arg("--key-file")
        .arg(&key)
        .arg("--socket")
        .arg(dir.path().join("j.sock"));
    let mut srv = Server::launch(cmd, dir.path().join("j.sock"), "j".into());
    let out = nbdinfo_size(&srv.uri());
    assert!(out.status.success(), "{}", stderr(&out));
    let (st, err) = srv.stop();
    assert!(st.success(), "{err}");
    let mut messages = vec![];
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        messages.push(v["fields"]["message"].as_str().unwrap().to_string());
        if v["fields"]["message"] == "volume unlocked" {
            assert_eq!(v["fields"]["sector_size"], 512, "{line}");
            assert_eq!(v["fields"]["discard"], "ignore", "the flag's word: {line}");
        }
    }
    for m in [
        "volume unlocked",
        "listening",
        "connection closed",
        "stopped; keys wiped",
    ] {
        assert!(messages.iter().any(|x| x == m), "no {m:?} in {messages:?}");
    }
    assert!(!err.contains(std::str::from_utf8(PASS).unwrap()));
    // An unknown format is a usage error.
    let out = run(nbdcrypt().args(["--log-format", "xml", "dump"]).arg(&img));
    assert_eq!(out.status.code(), Some(1));
}

/// On a host without the nbd module (no /dev/nbdN), `open --connect` and `close` fail at
/// once with exit 4 and an error naming `modprobe nbd`, before any passphrase is asked for;
/// a path that is no NBD device is refused too.
#[test]
fn connect_without_the_nbd_module_names_modprobe() {
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "k");
    let mut missing = vec![dir.path().join("nbd0")];
    if !Path::new("/dev/nbd0").exists() {
        missing.push(PathBuf::from("/dev/nbd0"));
    }
    for dev in &missing {
        // No --key-file and stdin /dev/null: asking for a passphrase would fail differently.
        let out = run(nbdcrypt().arg("open").arg(&img).arg("--connect").arg(dev));
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("modprobe nbd"), "{err}");
        assert!(err.contains(&dev.display().to_string()), "{err}");
        for close in [vec!["close"], vec!["open", "--disconnect"]] {
            let out = run(nbdcrypt().args(&close).arg(dev));
            assert_eq!(out.status.code(), Some(4), "{close:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("modprobe nbd"), "{}", stderr(&out));
        }
    }
    let out = run(nbdcrypt()
        .arg("open")
        .arg(&img)
        .arg("--key-file")
        .arg(&key)
        .arg("--connect")
        .arg(&key));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not an NBD device"),
        "{}",
        stderr(&out)
    );
    // --connect serves no socket: the listener flags are refused with it.
    let out = run(nbdcrypt().arg("open").arg(&img).args([
        "--connect",
        "/dev/nbd0",
        "--socket",
        "x.sock",
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

// --- contrib/systemd ---------------------------------------------------------------------

/// `KEY=VALUE` lines of a unit file (comments and sections dropped; repeated keys: the last).
fn unit(name: &str) -> HashMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/systemd")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The specifiers systemd.unit(5) defines that the units use: `%i` instance, `%t` runtime
/// directory (/run), `%S` state directory (/var/lib), `%d` credentials directory.
fn expand(s: &str, spec: &[(char, &str)]) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let k = it.next().expect("specifier");
        match spec.iter().find(|(n, _)| *n == k) {
            Some((_, v)) => out.push_str(v),
            None => panic!("unexpected specifier %{k} in {s}"),
        }
    }
    out
}

/// ExecStart split into words (the units use no quoting), with the binary replaced by ours.
fn exec_start(unit: &HashMap<String, String>, spec: &[(char, &str)]) -> Vec<String> {
    let line = expand(&unit["ExecStart"], spec);
    let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
    assert_eq!(words[0], "/usr/bin/nbdcrypt", "{line}");
    words[0] = env!("CARGO_BIN_EXE_nbdcrypt").to_string();
    words
}

/// `nbdcrypt@.socket` + `nbdcrypt@.service`: the service's ExecStart, with the specifiers
/// filled in, started with LISTEN_FDS on the socket's ListenStream= by
/// `systemd-socket-activate` (as systemd does) and the passphrase as a credential in
/// $CREDENTIALS_DIRECTORY; nbdinfo reads through it.
#[test]
fn systemd_socket_activated_template_serves() {
    let activate = require("systemd-socket-activate", "systemd");
    let dir = tempdir();
    let (run_dir, state, creds) = (
        dir.path().join("run"),
        dir.path().join("lib"),
        dir.path().join("creds"),
    );
    for d in [&run_dir, &state.join("nbdcrypt"), &creds] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (img, key) = volume(&state.join("nbdcrypt"), "vol");
    // LoadCredential=passphrase:/etc/nbdcrypt/%i.key copies the key file to %d/passphrase.
    let service = unit("nbdcrypt@.service");
    let (cred_name, cred_src) = service["LoadCredential"].split_once(':').unwrap();
    assert_eq!(cred_src, "/etc/nbdcrypt/%i.key");
    std::fs::copy(&key, creds.join(cred_name)).unwrap();
    let spec = [
        ('i', "vol"),
        ('t', run_dir.to_str().unwrap()),
        ('S', state.to_str().unwrap()),
        ('d', creds.to_str().unwrap()),
    ];
    let args = exec_start(&service, &spec);
    assert!(args.iter().any(|a| a == img.to_str().unwrap()), "{args:?}");
    let socket_unit = unit("nbdcrypt@.socket");
    let sock = PathBuf::from(expand(&socket_unit["ListenStream"], &spec));
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let log = dir.path().join("service.log");
    let mut child = Command::new(activate)
        .arg("--listen")
        .arg(&sock)
        .arg("-E")
        .arg(format!("CREDENTIALS_DIRECTORY={}", creds.display()))
        .args(["-E", "NBDCRYPT_LOG=info"])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        assert!(Instant::now() < deadline, "no socket after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts the service (systemd-socket-activate execs on accept).
    let uri = format!("nbd+unix:///vol?socket={}", sock.display());
    let info = run(nbd_tool("nbdinfo").args(["--json", &uri]));
    assert!(info.status.success(), "{}", stderr(&info));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["exports"][0]["export-name"], "vol");
    assert_eq!(v["exports"][0]["export-size"], 4u64 << 20);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let st = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "{st}: {log}");
    assert!(
        log.contains("listen=fd:3"),
        "served the passed socket: {log}"
    );
    assert!(log.contains("stopped; keys wiped"), "{log}");
}

/// `nbdcrypt-keyservice@.service` is Type=forking with PIDFile=: its ExecStart must return
/// only once the socket accepts and that pid file is written. Run here with `--key-file`
/// added in place of the key service (whose unlock the module `keyservice` covers), so this test
/// needs no service.
#[test]
fn systemd_forking_unit_is_ready_when_execstart_returns() {
    let dir = tempdir();
    let (run_dir, state) = (dir.path().join("run"), dir.path().join("lib"));
    std::fs::create_dir_all(run_dir.join("nbdcrypt")).unwrap(); // RuntimeDirectory=nbdcrypt
    std::fs::create_dir_all(state.join("nbdcrypt")).unwrap();
    let (_, key) = volume(&state.join("nbdcrypt"), "kv");
    let u = unit("nbdcrypt-keyservice@.service");
    assert_eq!(u["Type"], "forking");
    let spec = [
        ('i', "kv"),
        ('t', run_dir.to_str().unwrap()),
        ('S', state.to_str().unwrap()),
    ];
    let pid_file = PathBuf::from(expand(&u["PIDFile"], &spec));
    let args = exec_start(&u, &spec);
    assert!(
        !args.iter().any(|a| a == "--key-file"),
        "the unit unlocks through the key service, not a key file"
    );
    let log = dir.path().join("kv.log");
    let out = run_logged(
        Command::new(&args[0])
            .args(&args[1..])
            .arg("--key-file")
            .arg(&key),
        &log,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("PIDFile= written when ExecStart returns")
        .trim()
        .parse()
        .unwrap();
    let sock = run_dir.join("nbdcrypt/kv.sock");
    let size = nbdinfo_size(&format!("nbd+unix:///kv?socket={}", sock.display()));
    assert!(size.status.success(), "{}", stderr(&size));
    terminate(pid);
}

/// Every unit of `contrib/systemd/`, instantiated as `@vol`, passes `systemd-analyze verify`
/// without a word (an unknown or misspelt directive is only warned about, so any output fails).
#[test]
fn systemd_units_verify() {
    let analyze = require("systemd-analyze", "systemd");
    let dir = tempdir();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mut units = vec![];
    for e in std::fs::read_dir(&src).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let text = std::fs::read_to_string(src.join(&name))
            .unwrap()
            .replace("/usr/bin/nbdcrypt", env!("CARGO_BIN_EXE_nbdcrypt"));
        let inst = dir.path().join(name.replace("@.", "@vol."));
        std::fs::write(&inst, text).unwrap();
        units.push(inst);
    }
    assert_eq!(units.len(), 3, "{units:?}");
    let out = run(Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&units));
    assert!(out.status.success(), "{}", stderr(&out));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
}

/// Under systemd with stderr on the journal (`$JOURNAL_STREAM` names stderr's device and
/// inode), text lines carry no timestamp of their own (the journal stamps them); otherwise
/// they do.
#[test]
fn no_timestamps_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir();
    let (img, key) = volume(dir.path(), "t");
    let log = dir.path().join("t.log");
    let run_with = |journal: Option<String>| {
        File::create(&log).unwrap();
        let meta = std::fs::metadata(&log).unwrap();
        // A background server (`--fork`) logs "volume unlocked" to the log file, then is
        // stopped.
        let pid_file = dir.path().join("t.pid");
        let mut c = nbdcrypt();
        c.env("NBDCRYPT_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .arg("open")
            .arg(&img)
            .arg("--key-file")
            .arg(&key)
            .arg("--socket")
            .arg(dir.path().join("t.sock"))
            .arg("--fork")
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(j) = journal {
            c.env(
                "JOURNAL_STREAM",
                j.replace("DEV", &meta.dev().to_string())
                    .replace("INO", &meta.ino().to_string()),
            );
        }
        let out = run_logged(&mut c, &log);
        assert!(out.status.success(), "{}", stderr(&out));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        terminate(pid.trim().parse().unwrap());
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .find(|l| l.contains("volume unlocked"))
            .unwrap_or_else(|| panic!("no unlock line: {}", stderr(&out)))
            .to_string()
    };
    let stamped = |l: &str| l.starts_with("20") && l.as_bytes().get(10) == Some(&b'T');
    let plain = run_with(None);
    assert!(stamped(&plain), "{plain}");
    let journal = run_with(Some("DEV:INO".into()));
    assert!(journal.trim_start().starts_with("INFO"), "{journal}");
    // Another stream's device and inode (a child's stderr is not the journal then).
    let other = run_with(Some("DEV:1".into()));
    assert!(stamped(&other), "{other}");
}
