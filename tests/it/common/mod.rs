//! Shared helpers for integration tests that drive the real `nbdcrypt` binary and real peers
//! (cryptsetup, libnbd tools, qemu). The README's test command installs those peers; a missing
//! one fails the test with a message naming the package.
#![allow(dead_code)]

pub mod keyd;
pub mod nbd;
pub mod tls;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASS: &[u8] = b"correct horse battery staple";

/// The binary under test.
pub fn nbdcrypt() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nbdcrypt"));
    c.env("NBDCRYPT_LOG", "warn");
    c
}

/// Fail loudly when a peer tool is missing.
pub fn require(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed: run the README's test command (apt-get install {package})");
}

/// Run `nbdcrypt ARGS` (one shell word string: quote paths with spaces) on a pseudo-terminal
/// (util-linux `script`) typing `input`; stdout holds everything the terminal showed.
pub fn on_terminal(args: &str, input: &str) -> Output {
    let cmd = format!("{} {args}", env!("CARGO_BIN_EXE_nbdcrypt"));
    let mut child = Command::new(require("script", "bsdutils"))
        .args(["-qec", &cmd, "/dev/null"])
        .env("NBDCRYPT_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run script: {e}"));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Run a command, returning its output; panics if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run and require exit 0, returning stdout as text.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nbdcrypt-test-")
        .tempdir()
        .expect("tempdir")
}

/// Write the test passphrase to `dir/key` and return the path.
pub fn key_file(dir: &Path) -> PathBuf {
    let p = dir.join("key");
    std::fs::write(&p, PASS).unwrap();
    p
}

/// Cheap KDF cost flags, the same for `nbdcrypt format` and `cryptsetup luksFormat` (the flag
/// names are shared): PBKDF2 at 1000 iterations, Argon2 at time 4, 32 MiB, one lane.
pub fn cheap_kdf_args(pbkdf: &str) -> &'static [&'static str] {
    if pbkdf == "pbkdf2" {
        &["--pbkdf-force-iterations", "1000"]
    } else {
        &[
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-memory",
            "32768",
            "--pbkdf-parallel",
            "1",
        ]
    }
}

/// A volume formatted by us with a detached header, 8 MiB, cheap PBKDF2, passphrase in
/// [`key_file`]`(dir)`: `(data file, header file)`.
pub fn format_detached(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let img = dir.join(format!("{name}.img"));
    let hdr = dir.join(format!("{name}.hdr"));
    let key = key_file(dir);
    ok(nbdcrypt()
        .arg("format")
        .arg(&img)
        .arg("--header")
        .arg(&hdr)
        .args(["--size", "8M", "--pbkdf", "pbkdf2", "--key-file"])
        .arg(&key)
        .args(cheap_kdf_args("pbkdf2")));
    (img, hdr)
}

/// `nbdcrypt format` with cheap KDF costs.
pub fn format_cheap(image: &Path, key: &Path, size: &str, sector: u32, pbkdf: &str) {
    let mut c = nbdcrypt();
    c.arg("format")
        .arg(image)
        .args(["--size", size, "--pbkdf", pbkdf, "--sector-size"])
        .arg(sector.to_string())
        .arg("--key-file")
        .arg(key);
    c.args(cheap_kdf_args(pbkdf));
    ok(&mut c);
}

/// `cryptsetup luksFormat --type luks2` with cheap KDF costs on a fresh sparse file.
pub fn cryptsetup_format(image: &Path, key: &Path, size: u64, sector: u32, pbkdf: &str) {
    let cs = require("cryptsetup", "cryptsetup-bin");
    let f = std::fs::File::create(image).unwrap();
    f.set_len(size).unwrap();
    let mut c = Command::new(cs);
    c.args([
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        "--pbkdf",
        pbkdf,
    ])
    .args(["--sector-size", &sector.to_string()])
    .arg("--key-file")
    .arg(key);
    c.args(cheap_kdf_args(pbkdf));
    c.arg(image);
    ok(&mut c);
}

/// The volume key of an image, from `cryptsetup luksDump --dump-volume-key` (hex).
pub fn cryptsetup_volume_key(image: &Path, key: &Path) -> String {
    cryptsetup_volume_key_with(image, None, key)
}

/// [`cryptsetup_volume_key`] with an optional detached header (`--header HEADER`).
pub fn cryptsetup_volume_key_with(image: &Path, header: Option<&Path>, key: &Path) -> String {
    let cs = require("cryptsetup", "cryptsetup-bin");
    let mut cmd = Command::new(cs);
    cmd.args([
        "luksDump",
        "--dump-volume-key",
        "--batch-mode",
        "--key-file",
    ])
    .arg(key);
    if let Some(h) = header {
        cmd.arg("--header").arg(h);
    }
    let out = ok(cmd.arg(image));
    let mut hex = String::new();
    let mut in_key = false;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("MK dump:") {
            in_key = true;
            hex.push_str(rest);
        } else if in_key && line.starts_with('\t') {
            hex.push_str(line);
        } else {
            in_key = false;
        }
    }
    let hex: String = hex.split_whitespace().collect();
    assert_eq!(hex.len(), 128, "512-bit key expected in:\n{out}");
    hex
}

/// The real cryptsetup.
pub fn cryptsetup() -> Command {
    Command::new(require("cryptsetup", "cryptsetup-bin"))
}

/// `cryptsetup open --test-passphrase --key-file KEY IMAGE`.
pub fn cryptsetup_test_passphrase(img: &Path, key: &Path) -> Output {
    run(cryptsetup()
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(key)
        .arg(img))
}

/// `cryptsetup open --test-passphrase --key-file KEY --header HDR IMAGE` (detached header).
pub fn cryptsetup_test_passphrase_header(img: &Path, hdr: &Path, key: &Path) -> Output {
    run(cryptsetup()
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(key)
        .arg("--header")
        .arg(hdr)
        .arg(img))
}

/// `nbdcrypt test-passphrase IMAGE --key-file KEY [extra]`.
pub fn test_passphrase(img: &Path, key: &Path, extra: &[&str]) -> Output {
    run(nbdcrypt()
        .arg("test-passphrase")
        .arg(img)
        .arg("--key-file")
        .arg(key)
        .args(extra))
}

const XTS_PY: &str = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
mode, image, key_hex, data_off, ss, off, path = sys.argv[1:8]
key = bytes.fromhex(key_hex); data_off = int(data_off); ss = int(ss); off = int(off)
def xts(buf, sector512, enc):
    c = Cipher(algorithms.AES(key), modes.XTS(sector512.to_bytes(16, "little")))
    x = c.encryptor() if enc else c.decryptor()
    return x.update(buf) + x.finalize()
with open(image, "r+b") as img:
    if mode == "decrypt":
        n = int(path.split(":")[1]); out = path.split(":")[0]
        img.seek(data_off + off); ct = img.read(n)
        pt = b"".join(xts(ct[i:i+ss], (off + i) // 512, False) for i in range(0, n, ss))
        open(out, "wb").write(pt)
    else:
        pt = open(path, "rb").read()
        ct = b"".join(xts(pt[i:i+ss], (off + i) // 512, True) for i in range(0, len(pt), ss))
        img.seek(data_off + off); img.write(ct)
"#;

/// An independent AES-XTS over an image's data segment (Python `cryptography`, i.e. OpenSSL),
/// tweak = 512-byte sector number from the segment start (format-spec.md §6). Arguments:
/// `MODE IMAGE KEY_HEX DATA_OFFSET SECTOR_SIZE OFFSET ARG`, offsets in bytes: `decrypt` reads
/// `N` ciphertext bytes at volume `OFFSET` and writes their plaintext to `OUT` (`ARG` =
/// `OUT:N`); `encrypt` writes the ciphertext of the file `ARG` at volume `OFFSET`.
pub fn xts_python() -> Command {
    let py = require("python3", "python3-cryptography");
    let mut c = Command::new(py);
    c.arg("-c").arg(XTS_PY);
    c
}

/// Rewrite the metadata copy at byte `at` (0 or 16384) with `edit` applied to its JSON,
/// checksum fixed; only those 16 KiB are written (a sparse image stays sparse).
pub fn edit_copy(img: &Path, at: usize, edit: &dyn Fn(&mut serde_json::Value)) {
    use nbdcrypt::format::{self, header::BINARY_HEADER_SIZE};
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut copy = vec![0u8; 16384];
    file.read_exact_at(&mut copy, at as u64).unwrap();
    let (hdr, md) = format::decode_copy(&copy, at as u64).unwrap();
    let mut v = serde_json::to_value(&md).unwrap();
    edit(&mut v);
    let mut area = hdr.encode().unwrap();
    let mut json = serde_json::to_vec(&v).unwrap();
    json.resize(16384 - BINARY_HEADER_SIZE, 0);
    area.extend(json);
    format::header::seal(&mut area);
    file.write_all_at(&area, at as u64).unwrap();
}

/// Rewrite both metadata copies of an image with `edit` applied to the JSON, checksums fixed.
pub fn edit_metadata(img: &Path, edit: impl Fn(&mut serde_json::Value)) {
    edit_copy(img, 0, &edit);
    edit_copy(img, 16384, &edit);
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// All a finished child wrote to its piped stderr.
fn drain_stderr(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    err
}

/// A running `nbdcrypt open` or `nbdcrypt serve`, killed on drop (`stop` for SIGTERM).
pub struct Server {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub export: String,
}

impl Server {
    /// Start `nbdcrypt open IMAGE --key-file KEY --socket DIR/nbd.sock [extra]` and wait until
    /// the socket accepts.
    pub fn start(image: &Path, key: &Path, extra: &[&str]) -> Server {
        let socket = image.with_extension("sock");
        let mut cmd = nbdcrypt();
        cmd.arg("open")
            .arg(image)
            .arg("--key-file")
            .arg(key)
            .arg("--socket")
            .arg(&socket)
            .args(extra);
        let export = extra
            .windows(2)
            .find(|w| w[0] == "--export-name")
            .map(|w| w[1].to_string())
            .unwrap_or_else(|| image.file_stem().unwrap().to_string_lossy().into_owned());
        Server::launch(cmd, socket, export)
    }

    /// Start `nbdcrypt serve --export NAME=IMAGE --key-file NAME=KEY ... --socket DIR/serve.sock
    /// [extra]` (DIR = the first image's directory) and wait until the socket accepts.
    /// [`Server::export`] is the first name.
    pub fn serve(exports: &[(&str, &Path, &Path)], extra: &[&str]) -> Server {
        let socket = exports[0].1.with_file_name("serve.sock");
        let mut cmd = nbdcrypt();
        cmd.arg("serve");
        for (name, image, key) in exports {
            cmd.arg("--export")
                .arg(format!("{name}={}", image.display()))
                .arg("--key-file")
                .arg(format!("{name}={}", key.display()));
        }
        cmd.arg("--socket").arg(&socket).args(extra);
        Server::launch(cmd, socket, exports[0].0.to_string())
    }

    /// Spawn `cmd` (stderr piped) and wait until `socket` accepts.
    pub fn launch(mut cmd: Command, socket: PathBuf, export: String) -> Server {
        let _ = std::fs::remove_file(&socket);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nbdcrypt");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("nbdcrypt exited early ({st}): {}", drain_stderr(&mut child));
            }
            assert!(Instant::now() < deadline, "server did not start in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child: Some(child),
            socket,
            export,
        }
    }

    /// `nbd+unix:///EXPORT?socket=PATH`
    pub fn uri(&self) -> String {
        self.uri_for(&self.export)
    }

    /// `nbd+unix:///NAME?socket=PATH`
    pub fn uri_for(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.socket.display())
    }

    /// SIGTERM, wait, and return (exit status, stderr).
    pub fn stop(&mut self) -> (std::process::ExitStatus, String) {
        self.stop_with(libc::SIGTERM)
    }

    /// Send `signal`, wait, and return (exit status, stderr).
    pub fn stop_with(&mut self, signal: i32) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return (st, drain_stderr(&mut child));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), for test data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// libnbd's Python tools need Debian's python (the pyenv one on PATH lacks the `nbd` module).
pub fn nbd_tool(tool: &str) -> Command {
    let p = require(tool, "libnbd-bin");
    let mut c = Command::new(p);
    c.env(
        "PATH",
        format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
    );
    c
}
