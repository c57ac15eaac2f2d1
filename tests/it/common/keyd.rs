//! Helpers for tests of the key service: a real `nbdcrypt-keyd` process on loopback with its
//! store in a temporary directory, and `curl` as the HTTPS client (client certificates from
//! `host add`, bearer tokens from `token add`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ok, require, run};

/// The key service binary under test.
pub fn keyd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nbdcrypt-keyd"));
    c.env("NBDCRYPT_LOG", "warn");
    c
}

/// A key service store in `dir/data`; `serve` runs it.
pub struct Keyd {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub admin_token: String,
    pub child: Option<Child>,
    pub url: String,
}

/// A reply: status, content type, JSON body (`Null` if not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl Keyd {
    /// `nbdcrypt-keyd init` in `dir/data` (key-file root key); not yet serving.
    pub fn init(dir: &Path) -> Keyd {
        let data = dir.join("data");
        let out = run(keyd().arg("--data-dir").arg(&data).arg("init"));
        assert!(out.status.success(), "{out:?}");
        // The token alone on stdout, the sentences on stderr.
        let admin_token = String::from_utf8(out.stdout)
            .unwrap()
            .strip_suffix('\n')
            .expect("init prints the admin token and a newline")
            .to_string();
        assert!(
            admin_token.starts_with("nbk_") && !admin_token.contains(char::is_whitespace),
            "stdout is the bare token: {admin_token:?}"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("admin token (shown once"));
        Keyd {
            dir: dir.to_path_buf(),
            data,
            admin_token,
            child: None,
            url: String::new(),
        }
    }

    /// The escrow and recovery tests' service: [`Keyd::init`] in `dir`, the KEKs `keks`
    /// created, host `hostA` ([`Keyd::host`]), recovery officer `olga` ([`Keyd::officer`]),
    /// serving. Returns (service, olga's age identity file, her officer token).
    pub fn with_officer(dir: &Path, keks: &[&str]) -> (Keyd, PathBuf, String) {
        let mut k = Keyd::init(dir);
        for kek in keks {
            k.admin(&["kek", "create", kek]);
        }
        k.host("hostA");
        let (identity, token) = k.officer("olga");
        k.serve();
        (k, identity, token)
    }

    /// `nbdcrypt-keyd --data-dir D ARGS...`, required to succeed; stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        ok(keyd().arg("--data-dir").arg(&self.data).args(args))
    }

    /// The directory `host add NAME` writes into: `dir/NAME` (host.pem, host.key, ca.pem).
    pub fn host_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `host add NAME --out-dir dir/NAME`; returns (cert, key).
    pub fn host(&self, name: &str) -> (PathBuf, PathBuf) {
        let out = self.host_dir(name);
        self.admin(&["host", "add", name, "--out-dir", out.to_str().unwrap()]);
        (out.join("host.pem"), out.join("host.key"))
    }

    /// The volume CLI's identity flags for host `name` (its [`Keyd::host`] files and this
    /// store's `ca.pem`) with a 5 s endpoint timeout.
    pub fn host_args(&self, name: &str) -> Vec<String> {
        let f = |p: PathBuf| p.to_str().unwrap().to_string();
        vec![
            "--key-service-cert".into(),
            f(self.host_dir(name).join("host.pem")),
            "--key-service-key".into(),
            f(self.host_dir(name).join("host.key")),
            "--key-service-ca".into(),
            f(self.data.join("ca.pem")),
            "--key-service-timeout".into(),
            "5".into(),
        ]
    }

    /// `token add NAME --role ROLE`; the token.
    pub fn token(&self, name: &str, role: &str) -> String {
        self.admin(&["token", "add", name, "--role", role])
            .trim()
            .to_string()
    }

    /// Starts `serve --listen 127.0.0.1:0` and waits for its `listening on` line.
    pub fn serve(&mut self) {
        self.serve_with(keyd())
    }

    /// [`Keyd::serve`] with `cmd` (the key service binary, or a wrapper that executes it) in
    /// place of [`keyd`].
    pub fn serve_with(&mut self, cmd: Command) {
        self.serve_args(cmd, &[])
    }

    /// [`Keyd::serve_with`] with `extra` flags of `serve` (bounds, timeouts).
    pub fn serve_args(&mut self, mut cmd: Command, extra: &[&str]) {
        assert!(self.child.is_none(), "already serving");
        let mut child = cmd
            .arg("--data-dir")
            .arg(&self.data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nbdcrypt-keyd");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            assert!(Instant::now() < deadline, "nbdcrypt-keyd did not start");
            match lines.next() {
                Some(Ok(l)) => {
                    // stderr is a pipe here: plain text, no terminal colours.
                    assert!(!l.contains('\x1b'), "colour codes in a log line: {l:?}");
                    if let Some(u) = l.split("listening on ").nth(1) {
                        break u.trim().to_string();
                    }
                }
                _ => panic!("nbdcrypt-keyd exited early: {:?}", child.wait()),
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.url = url;
        self.child = Some(child);
    }

    /// Sends `signal` to the server and waits for it to exit.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("serving");
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        child.wait().unwrap()
    }

    /// `curl` to `PATH` of the server with `args` (method, data, identity) before the URL.
    pub fn curl(&self, path: &str, args: &[&str]) -> Reply {
        self.curl_within(20, path, args)
    }

    /// [`Keyd::curl`] giving up after `max_secs` seconds (status 0 then).
    pub fn curl_within(&self, max_secs: u32, path: &str, args: &[&str]) -> Reply {
        let curl = require("curl", "curl");
        let out = run(Command::new(curl)
            .args(["-sS", "--max-time", &max_secs.to_string(), "--cacert"])
            .arg(self.data.join("ca.pem"))
            .args(["-w", "\n%{http_code} %{content_type}"])
            .args(args)
            .arg(format!("{}{path}", self.url)));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, meta) = text
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("curl {path}: no status: {text} {:?}", out));
        let (status, ctype) = meta.split_once(' ').unwrap_or((meta, ""));
        Reply {
            status: status.parse().unwrap_or(0),
            content_type: ctype.to_string(),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }

    /// POST/PUT JSON as host `name` (its `host add` files in `dir`).
    pub fn as_host(&self, name: &str, method: &str, path: &str, body: &Value) -> Reply {
        let cert = self.host_dir(name).join("host.pem");
        let key = self.host_dir(name).join("host.key");
        let b = body.to_string();
        self.curl(
            path,
            &[
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "-X",
                method,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &b,
            ],
        )
    }

    /// GET as host `name`.
    pub fn get_as_host(&self, name: &str, path: &str) -> Reply {
        let cert = self.host_dir(name).join("host.pem");
        let key = self.host_dir(name).join("host.key");
        self.curl(
            path,
            &[
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        )
    }

    /// A request with a bearer token (`method` GET or POST with `body`).
    pub fn with_token(&self, token: &str, method: &str, path: &str, body: &Value) -> Reply {
        let auth = format!("Authorization: Bearer {token}");
        let b = body.to_string();
        let mut args = vec!["-H", &auth, "-X", method];
        if method != "GET" {
            args.extend(["-H", "Content-Type: application/json", "--data-binary", &b]);
        }
        self.curl(path, &args)
    }

    /// Adds this host's identity flags (`--key-service-cert/-key/-ca`, its `host add` files in
    /// `dir`) to an `nbdcrypt` command.
    pub fn host_flags<'c>(&self, c: &'c mut Command, host: &str) -> &'c mut Command {
        c.arg("--key-service-cert")
            .arg(self.host_dir(host).join("host.pem"))
            .arg("--key-service-key")
            .arg(self.host_dir(host).join("host.key"))
            .arg("--key-service-ca")
            .arg(self.data.join("ca.pem"))
    }

    /// A recovery officer `name`: an age identity `dir/NAME.agekey` registered with `officer
    /// add`, and an officer token. Returns (identity file, token).
    pub fn officer(&self, name: &str) -> (PathBuf, String) {
        let (key, recipient) = age_keygen(&self.dir, name);
        self.admin(&["officer", "add", name, &recipient]);
        (key, self.token(name, "officer"))
    }

    /// The escrow package of `uuid` as the officer with `token` fetches it (armored age text).
    pub fn fetch_package(&self, token: &str, uuid: &str) -> String {
        let r = self.with_token(
            token,
            "GET",
            &format!("/v1/volumes/{uuid}/escrow"),
            &Value::Null,
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.body["package"].as_str().unwrap().to_string()
    }

    /// Every audit row, read with `audit list`.
    pub fn audit_rows(&self) -> Vec<Value> {
        self.admin(&["audit", "list"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// `age-keygen -o DIR/NAME.agekey`; returns (identity file, its `age1...` recipient).
pub fn age_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let keygen = require("age-keygen", "age");
    let key = dir.join(format!("{name}.agekey"));
    let out = run(Command::new(&keygen).arg("-o").arg(&key));
    assert!(out.status.success(), "{out:?}");
    let out = run(Command::new(&keygen).arg("-y").arg(&key));
    assert!(out.status.success(), "{out:?}");
    (
        key,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

/// The stock `age -d -i IDENTITY` on an armored package: its plaintext as JSON.
pub fn age_decrypt(identity: &Path, package: &str) -> Value {
    let age = require("age", "age");
    let file = identity.with_extension("package.age");
    std::fs::write(&file, package).unwrap();
    let out = run(Command::new(age)
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(&file));
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The stock `age -e -a -i IDENTITY`: `plain` sealed to that identity's recipient (armored).
pub fn age_encrypt(identity: &Path, plain: &str) -> String {
    let age = require("age", "age");
    let file = identity.with_extension("plain.json");
    std::fs::write(&file, plain).unwrap();
    let out = run(Command::new(age)
        .args(["-e", "-a", "-i"])
        .arg(identity)
        .arg(&file));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

impl Drop for Keyd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
