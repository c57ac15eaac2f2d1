//! "Every crash found becomes a regression test": every file under
//! `fuzz/regressions/TARGET/` goes through the same library calls as the fuzz target `TARGET`
//! (`fuzz/fuzz_targets/TARGET.rs`: its body is the function `run` of
//! `fuzz/fuzz_targets/bodies/TARGET.rs`, which both include) and must not panic and must
//! produce the result class `run` returns for it, which its name ends with:
//! `NAME.CLASS`. A crash input from `fuzz/artifacts/TARGET/` is copied there, named for the
//! class the fixed code gives it (docs/reliability.md). Seed corpora in `fuzz/seeds/` (made by
//! `fuzz/make-seeds.sh`, not checked in) are replayed too when present, for "no panic" only.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

// The targets' bodies, the same files the fuzz targets include (they find `crate::common`).
#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;
#[path = "../fuzz/fuzz_targets/bodies/keyslot_unlock.rs"]
mod keyslot_unlock;
#[path = "../fuzz/fuzz_targets/bodies/luks2_header.rs"]
mod luks2_header;
#[path = "../fuzz/fuzz_targets/bodies/nbd_session.rs"]
mod nbd_session;

type Target = fn(&[u8]) -> String;

const TARGETS: [(&str, Target); 3] = [
    ("luks2_header", luks2_header::run),
    ("keyslot_unlock", keyslot_unlock::run),
    ("nbd_session", nbd_session::run),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Run `target` on `file`; `Err` with the panic message if it panicked.
fn replay(target: Target, file: &Path) -> Result<String, String> {
    let data = std::fs::read(file).unwrap();
    catch_unwind(AssertUnwindSafe(|| target(&data))).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

#[test]
fn every_regression_input_gives_its_class_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, target) in TARGETS {
        let inputs = files(&root.join(name));
        assert!(
            !inputs.is_empty(),
            "{}: no regression inputs (the test would check nothing)",
            root.join(name).display()
        );
        for f in inputs {
            let fname = f.file_name().unwrap().to_string_lossy().into_owned();
            let Some((_, want)) = fname.rsplit_once('.') else {
                failures.push(format!("{name}/{fname}: no .CLASS suffix"));
                continue;
            };
            count += 1;
            match replay(target, &f) {
                Ok(got) if got == want => {}
                Ok(got) => failures.push(format!("{name}/{fname}: class {got}, expected {want}")),
                Err(msg) => failures.push(format!("{name}/{fname}: panicked: {msg}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("fuzz regressions: {count} inputs replayed, each with its class, no panic");
}

/// The seed corpora, when `fuzz/make-seeds.sh` has made them: no panic.
#[test]
fn seed_corpora_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut count = 0;
    for (name, target) in TARGETS {
        for f in files(&root.join(name)) {
            count += 1;
            if let Err(msg) = replay(target, &f) {
                panic!("{}: panicked: {msg}", f.display());
            }
        }
    }
    eprintln!("fuzz seeds: {count} inputs replayed (0: run fuzz/make-seeds.sh to make them)");
}
