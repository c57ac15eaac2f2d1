//! Secrets stay secret: the server runs non-dumpable with its key pages locked, a
//! forced crash leaves no core file, and its debug-level log never carries the volume key or
//! the passphrase; the key service (`nbdcrypt-keyd serve`) is non-dumpable and locked too.

use crate::common;

use base64::Engine;
use common::*;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

/// `sh -c 'ulimit -c unlimited && exec PROGRAM ARGS'` in `dir`: a crash there may leave a core
/// file in `dir` (core_pattern `core`) unless the process is non-dumpable.
fn with_cores(dir: &Path, program: &Path) -> Command {
    let mut c = Command::new("sh");
    c.current_dir(dir)
        .arg("-c")
        .arg("ulimit -c unlimited && exec \"$0\" \"$@\"")
        .arg(program);
    c
}

fn core_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("core"))
        .collect()
}

fn vm_lck_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|n| n.parse().unwrap()))
        .unwrap()
}

#[test]
fn no_key_in_logs_or_crash_artifacts() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("s.img");
    format_cheap(&img, &key, "18M", 512, "pbkdf2");
    let vk_hex = cryptsetup_volume_key(&img, &key);
    let vk: Vec<u8> = (0..64)
        .map(|i| u8::from_str_radix(&vk_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let crash_dir = dir.path().join("cwd");
    std::fs::create_dir(&crash_dir).unwrap();

    // Control: can this machine write a core file at all? (core_pattern, hard RLIMIT_CORE)
    let mut control = with_cores(&crash_dir, Path::new("/bin/sleep"))
        .arg("30")
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    unsafe { libc::kill(control.id() as i32, libc::SIGABRT) };
    let cores_possible = control.wait().unwrap().core_dumped();
    for f in core_files(&crash_dir) {
        std::fs::remove_file(crash_dir.join(f)).unwrap();
    }

    let mut cmd = with_cores(&crash_dir, Path::new(env!("CARGO_BIN_EXE_nbdcrypt")));
    cmd.env("NBDCRYPT_LOG", "debug")
        .arg("open")
        .arg(&img)
        .arg("--key-file")
        .arg(&key)
        .arg("--socket")
        .arg(dir.path().join("s.sock"));
    let mut srv = Server::launch(cmd, dir.path().join("s.sock"), "s".into());
    let pid = srv.child.as_ref().unwrap().id();
    // Some traffic, so the data path has logged what it logs.
    let uri = srv.uri();
    ok(nbd_tool("nbdsh")
        .args(["-u", &uri, "-c"])
        .arg("h.pwrite(b'x' * 65536, 4096, nbd.CMD_FLAG_FUA); h.pread(65536, 0); h.flush()"));
    ok(nbd_tool("nbdinfo").arg(&uri));
    let locked = vm_lck_kib(pid);
    assert!(locked >= 4, "no key page locked (VmLck {locked} KiB)");

    let (status, log) = srv.stop_with(libc::SIGABRT);
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{log}");
    assert!(!status.core_dumped(), "the server dumped core");
    assert_eq!(core_files(&crash_dir), Vec::<String>::new());
    if !cores_possible {
        eprintln!("note: this machine writes no core files at all; the dump check is weak here");
    }

    assert!(log.contains("DEBUG"), "debug logging was not on: {log}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&vk);
    let pass = String::from_utf8_lossy(PASS).into_owned();
    for needle in [
        vk_hex.to_lowercase(),
        vk_hex.to_uppercase(),
        vk_hex[..32].to_lowercase(),
        b64.clone(),
        b64[..20].to_string(),
        pass,
    ] {
        assert!(
            !log.contains(&needle),
            "secret {needle:?} in the log:\n{log}"
        );
    }
    let raw = log.as_bytes();
    assert!(
        !raw.windows(16).any(|w| w == &vk[..16] || w == &vk[32..48]),
        "raw key bytes in the log"
    );
    eprintln!(
        "secrets: {} log bytes scanned, VmLck {locked} KiB, core dumps possible here: {cores_possible}",
        log.len()
    );
}

/// Where `mlock` is refused (here: `ulimit -l 0` and `CAP_IPC_LOCK` dropped, as root ignores
/// the limit otherwise) the command still works and says so once; where it is allowed, it
/// says nothing.
#[test]
fn refused_mlock_warns_once_and_the_secret_stays_usable() {
    let dir = tempdir();
    let key = key_file(dir.path());
    let img = dir.path().join("m.img");
    format_cheap(&img, &key, "17M", 512, "pbkdf2");
    const WARNING: &str = "cannot lock key memory in RAM";
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -l 0 && exec setpriv --bounding-set -ipc_lock --inh-caps -ipc_lock "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_nbdcrypt"))
        .arg("test-passphrase")
        .arg(&img)
        .arg("--key-file")
        .arg(&key));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.matches(WARNING).count(), 1, "{err}");
    let control = test_passphrase(&img, &key, &[]);
    assert_eq!(control.status.code(), Some(0), "{}", stderr(&control));
    assert!(!stderr(&control).contains(WARNING), "{}", stderr(&control));
}

/// The owner of `/proc/PID/status`: the process's user while it is dumpable, root when it is not
/// (proc(5), `PR_SET_DUMPABLE`).
fn proc_owner(pid: u32) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid()
}

/// A running `nbdcrypt-keyd serve` (holding the root key) is non-dumpable: started as user
/// 65534, its `/proc/PID/status` is owned by root, as it is not for a control `sleep` started the same
/// way. Started as root (`CAP_IPC_LOCK`), its memory is locked (`VmLck` above 0).
#[test]
fn keyd_serve_is_non_dumpable_and_locked() {
    let dir = tempdir();
    let as_nobody = |program: &str| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(program)
            .env("NBDCRYPT_LOG", "warn");
        c
    };
    let mut control = as_nobody("sleep").arg("30").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let control_owner = proc_owner(control.id());
    control.kill().unwrap();
    control.wait().unwrap();
    assert_eq!(
        control_owner, 65534,
        "the control process does not run as 65534"
    );

    let mut k = common::keyd::Keyd::init(dir.path());
    k.serve();
    let pid = k.child.as_ref().unwrap().id();
    let locked = vm_lck_kib(pid);
    k.stop_with(libc::SIGTERM);
    assert!(
        locked >= 4,
        "nbdcrypt-keyd memory not locked (VmLck {locked} KiB)"
    );

    ok(Command::new("chown")
        .arg("-R")
        .arg("65534:65534")
        .arg(dir.path()));
    k.serve_with(as_nobody(env!("CARGO_BIN_EXE_nbdcrypt-keyd")));
    let pid = k.child.as_ref().unwrap().id();
    let owner = proc_owner(pid);
    k.stop_with(libc::SIGTERM);
    assert_eq!(
        owner, 0,
        "nbdcrypt-keyd serve is dumpable (/proc/{pid}/status owned by {owner})"
    );
    eprintln!(
        "secrets: nbdcrypt-keyd serve: /proc/PID/status owned by root when run as 65534 \
         (non-dumpable), VmLck {locked} KiB as root"
    );
}
