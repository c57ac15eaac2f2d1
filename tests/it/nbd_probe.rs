//! Runs the shared raw-socket conformance probe (`../shared/tools/nbd-probe.py` beside the
//! checkout, or `$NBD_PROBE`) against the in-process server with a RAM export and against a
//! real `nbdcrypt open`, and checks each of its lines.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::nbd::*;

fn probe_path() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os("NBD_PROBE") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/tools/nbd-probe.py"
            )),
            PathBuf::from("/work/shared/tools/nbd-probe.py"),
        ],
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("NBD probe script not found at {candidates:?} (set NBD_PROBE to its path)")
        })
}

/// The probe line starting with `id ` (e.g. "H1 "), panicking with the whole output if absent.
fn line<'a>(out: &'a str, id: &str) -> &'a str {
    let prefix = format!("{id} ");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {id} line in probe output:\n{out}"))
}

fn expect(out: &str, id: &str, needle: &str) {
    let l = line(out, id);
    assert!(
        l.contains(needle),
        "{id}: expected {needle:?} in {l:?}\nfull output:\n{out}"
    );
}

#[test]
fn probe_conformance() {
    let probe = probe_path();
    let srv = TestServer::start(MemExport::new(65 * MIB, 512), false);
    let out = run_ok(
        Command::new(python())
            .arg(&probe)
            .arg(&srv.sock)
            .arg(EXPORT),
    );
    check(
        &out,
        "EXPORT(size=68157440,flags=0xd6d) BLOCK_SIZE(min=512,pref=4096,max=33554432) \
         NAME('vol') DESCRIPTION('test volume') ACK",
    );
    srv.stop();
}

/// The same probe through the whole stack: `nbdcrypt open` of a LUKS2 volume (unaligned
/// requests go through read-modify-write, T14's data goes through encryption and restart-free
/// reconnection), and the server exits 0 afterwards.
#[test]
fn probe_against_nbdcrypt_open() {
    let probe = probe_path();
    let dir = common::tempdir();
    let key = common::key_file(dir.path());
    let img = dir.path().join("probe.img");
    common::format_cheap(&img, &key, "96M", 512, "pbkdf2");
    let mut srv = common::Server::start(&img, &key, &[]);
    let out = run_ok(
        Command::new(python())
            .arg(&probe)
            .arg(&srv.socket)
            .arg(&srv.export),
    );
    check(
        &out,
        "EXPORT(size=83886080,flags=0xd6d) BLOCK_SIZE(min=512,pref=4096,max=33554432) \
         NAME('probe') DESCRIPTION('nbdcrypt LUKS2 volume') ACK",
    );
    let (st, err) = srv.stop();
    assert!(
        st.success(),
        "server must survive the probe and exit 0: {err}"
    );
}

fn check(out: &str, h5: &str) {
    let out = out.to_string();
    eprintln!("{out}");
    expect(&out, "H0", "FIXED_NEWSTYLE=1 NO_ZEROES=1");
    expect(&out, "H1", "-> ERR_UNSUP; option phase then alive");
    expect(&out, "H2", "-> ERR_UNSUP; option phase then alive");
    expect(&out, "H3", "-> ERR_INVALID; option phase then alive");
    expect(&out, "H4", "-> ERR_UNKNOWN; option phase then alive");
    expect(&out, "H5", h5);
    expect(&out, "H6", "-> ERR_INVALID; option phase then alive");
    expect(&out, "H7", "-> ERR_INVALID; option phase then alive");
    expect(&out, "H8", "-> ERR_UNSUP; option phase then alive");
    expect(
        &out,
        "H9",
        "-> SR=ACK, SR again=ERR_INVALID, LIST_META_CONTEXT=['base:allocation'] ACK, \
         SET_META_CONTEXT=META_CONTEXT,ACK; option phase then alive",
    );
    expect(&out, "H12", "-> ACK");
    expect(&out, "H13", "option phase closed");
    let h14: Vec<&str> = out.lines().filter(|l| l.starts_with("H14 ")).collect();
    assert_eq!(
        h14,
        [
            "H14 EXPORT_NAME cflags=3 -> 10 bytes (expect 10)",
            "H14 EXPORT_NAME cflags=1 -> 134 bytes (expect 134)"
        ],
        "{out}"
    );
    expect(&out, "H15", "-> closed(");
    expect(&out, "T0", "flags=0xd6d");
    expect(&out, "T1", "-> EINVAL");
    expect(&out, "T2", "-> ENOSPC");
    expect(&out, "T3", "-> EINVAL");
    expect(&out, "T4", "-> OK");
    expect(&out, "T5", "-> EINVAL");
    expect(&out, "T6", "-> EINVAL");
    expect(&out, "T7", "-> OK");
    expect(&out, "T8", "-> OK");
    expect(&out, "T9", "-> OK");
    expect(&out, "T10", "-> ENOSPC");
    expect(&out, "T11", "-> EINVAL"); // TRIM is advertised now: EINVAL from the bounds check
    let t12 = line(&out, "T12");
    assert!(
        t12.contains("-> EINVAL") || t12.contains("-> disconnect"),
        "T12: {t12}"
    );
    expect(&out, "T13", "32/32 replies, cookies all matched");
    expect(&out, "T14", "data persisted: True");
    assert!(!out.contains("DESYNC"), "{out}");
}
