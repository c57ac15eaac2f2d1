//! `docs/keyservice-guide.md` run as written: its `sh` blocks, in order, in one `bash -e` in a
//! fresh directory, with the built `nbdcrypt` and `nbdcrypt-keyd` first on PATH. Only the
//! port (a free one for 8443) and the key derivations of `format` and `recover` (cheap
//! PBKDF2) are changed, so the guide cannot drift from the programs.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::keyd::keyd;
use crate::common::{cheap_kdf_args, free_port, ok, require, run, tempdir};

/// The guide's `sh` blocks, in order.
fn sh_blocks(guide: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in guide.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed sh block");
    blocks
}

#[test]
fn the_keyservice_guide_runs_as_written() {
    require("age-keygen", "age");
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/keyservice-guide.md"),
    )
    .unwrap();
    let blocks = sh_blocks(&guide);
    let script = blocks.concat();
    // Every step of the first hour is in the guide as a command.
    for step in [
        "nbdcrypt-keyd --data-dir keyd init",
        "nbdcrypt-keyd --data-dir keyd serve",
        "kek create volumes",
        "host add web1 --out-dir host",
        "officer add olga",
        "nbdcrypt format vol.img",
        "nbdcrypt add-key vol.img",
        "nbdcrypt open vol.img",
        "nbdcrypt escrow vol.img",
        "nbdcrypt recover vol.img",
        "kek rotate volumes",
        "--min-unwrap-version 2",
    ] {
        assert!(script.contains(step), "the guide has no `{step}`");
    }
    let cheap = format!("--pbkdf pbkdf2 {}", cheap_kdf_args("pbkdf2").join(" "));
    let script = script
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{}", free_port()))
        .replace("nbdcrypt format ", &format!("nbdcrypt format {cheap} "))
        .replace("nbdcrypt recover ", &format!("nbdcrypt recover {cheap} "));

    let dir = tempdir();
    let bin = Path::new(env!("CARGO_BIN_EXE_nbdcrypt")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // Whatever happens, the service started in the background is stopped.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null' EXIT\nset -euo pipefail\n{script}");
    let out = run(Command::new(require("timeout", "coreutils"))
        .args(["120", "bash", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("NBDCRYPT_LOG", "warn"));
    assert!(
        out.status.success(),
        "the guide failed: {out:?}\nkeyd.log: {}",
        std::fs::read_to_string(dir.path().join("keyd.log")).unwrap_or_default()
    );

    // What the guide says happened did: the keyslot moved to version 2, which alone unwraps,
    // and the recovered passphrase is in a keyslot.
    let data = dir.path().join("keyd");
    let show: Value = serde_json::from_str(&ok(keyd()
        .arg("--data-dir")
        .arg(&data)
        .args(["kek", "show", "volumes"])))
    .unwrap();
    let per_version: Vec<_> = show["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["keyslots"].as_i64().unwrap())
        .collect();
    assert_eq!(per_version, [0, 1], "{show}");
    let audit = ok(keyd().arg("--data-dir").arg(&data).args(["audit", "list"]));
    for action in ["host-add", "wrap", "unwrap", "escrow-store", "escrow-fetch"] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "no {action} row: {audit}"
        );
    }
}
