//! "Every crash found becomes a regression test" (issue 7): every file under
//! `fuzz/regressions/TARGET/` goes through the same library calls as the fuzz target `TARGET`
//! (`fuzz/fuzz_targets/TARGET.rs`, whose body is mirrored here; the helpers are the targets'
//! own `common.rs`) and must not panic and must produce the result class its name ends with:
//! `NAME.CLASS`. A crash input from `fuzz/artifacts/TARGET/` is copied there, named for the
//! class the fixed code gives it (docs/reliability.md). Seed corpora in `fuzz/seeds/` (made by
//! `fuzz/make-seeds.sh`, not checked in) are replayed too when present, for "no panic" only.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use nbdcrypt::format::{self, header::BinaryHeader};
use nbdcrypt::volume::{self, VolumeError};

#[allow(dead_code)]
#[path = "../fuzz/fuzz_targets/common.rs"]
mod fuzz_common;

fn kind(e: &VolumeError) -> &'static str {
    match e {
        VolumeError::Device { .. } => "Device",
        VolumeError::NotLuks { .. } => "NotLuks",
        VolumeError::Corrupt { .. } => "Corrupt",
        VolumeError::Unsupported { .. } => "Unsupported",
        VolumeError::WrongPassphrase => "WrongPassphrase",
        VolumeError::NoUsableKeyslot { .. } => "NoUsableKeyslot",
        VolumeError::OutOfMemory { .. } => "OutOfMemory",
        VolumeError::InvalidArgument(_) => "InvalidArgument",
        VolumeError::Crypto(_) => "Crypto",
        _ => "other",
    }
}

fn resealed(flags: u8, image: &[u8]) -> Vec<u8> {
    let mut b = image.to_vec();
    if flags & 1 != 0 {
        fuzz_common::reseal(&mut b, 0);
        if let Ok(h) = BinaryHeader::decode(&b) {
            fuzz_common::reseal(&mut b, h.hdr_size as usize);
        }
    }
    b
}

/// `luks2_header.rs`'s `exercise`.
fn exercise(hdr: &BinaryHeader, md: &format::metadata::Metadata) {
    for len in [0, 1 << 20, 17 << 20, u64::MAX] {
        let _ = format::data_segment(md, len);
    }
    let _ = format::segment_digest(md);
    for id in md.keyslots.keys() {
        let _ = format::keyslot_profile(md, id.0);
    }
    if let Ok(bytes) = format::encode_copy(hdr, md) {
        let (_, again) = format::decode_copy(&bytes, hdr.hdr_offset)
            .expect("a copy we encoded from decoded metadata must decode");
        assert_eq!(&again, md, "metadata changed in a round trip");
    }
}

fn format_kind(e: &format::FormatError) -> &'static str {
    match e {
        format::FormatError::NotLuks => "NotLuks",
        format::FormatError::Corrupt(_) => "Corrupt",
        format::FormatError::Unsupported(_) => "Unsupported",
        format::FormatError::Invalid(_) => "Invalid",
    }
}

/// The `luks2_header` target; the class is `P+S+L`: `decode_copy` of the primary and of the
/// secondary copy (`ok`, the error kind, or `none` without a binary header) and
/// `load_header` of the whole input (`ok` or the error kind).
fn luks2_header(data: &[u8]) -> String {
    let Some((&flags, rest)) = data.split_first() else {
        return "short".into();
    };
    let b = resealed(flags, rest);
    let _ = format::decode_json_area(&b);
    let mut copies = ["none".to_string(), "none".to_string()];
    if let Ok(h) = BinaryHeader::decode(&b) {
        let _ = h.encode();
        let size = h.hdr_size as usize;
        for (i, at) in [0, size].into_iter().enumerate() {
            if let Some(copy) = b.get(at..at.saturating_add(size)) {
                copies[i] = match format::decode_copy(copy, at as u64) {
                    Ok((hdr, md)) => {
                        exercise(&hdr, &md);
                        "ok".into()
                    }
                    Err(e) => format_kind(&e).into(),
                };
            }
        }
    }
    let f = fuzz_common::mem_image(&b, 0);
    let load = match volume::load_header(&f, Path::new("fuzz.img")) {
        Ok(lh) => {
            exercise(&lh.header, &lh.metadata);
            "ok"
        }
        Err(e) => kind(&e),
    };
    format!("{}+{}+{load}", copies[0], copies[1])
}

/// `keyslot_unlock.rs`'s `cheap`.
fn cheap(md: &format::metadata::Metadata) -> bool {
    md.digests.values().all(|d| d.iterations <= 2000)
        && md.keyslots.values().all(|k| match &k.kdf {
            None => true,
            Some(kdf) => {
                kdf.iterations.unwrap_or(0) <= 2000
                    && kdf.memory.unwrap_or(0) <= 1024
                    && kdf.time.unwrap_or(0) <= 4
                    && kdf.cpus.unwrap_or(0) <= 4
            }
        })
}

/// The `keyslot_unlock` target; the class: `short`, `load-KIND`, `expensive`, `unlocked`, or
/// the unlock error kind.
fn keyslot_unlock(data: &[u8]) -> String {
    let [flags, n, rest @ ..] = data else {
        return "short".into();
    };
    let n = (*n as usize).min(rest.len());
    let (pass, image) = rest.split_at(n);
    let b = resealed(*flags, image);
    let path = Path::new("fuzz.img");
    let f = fuzz_common::mem_image(&b, 17 << 20);
    let lh = match volume::load_header(&f, path) {
        Ok(lh) => lh,
        Err(e) => return format!("load-{}", kind(&e)),
    };
    if !cheap(&lh.metadata) {
        return "expensive".into();
    }
    match volume::unlock(&f, path, &lh, pass, None, Some(1024)) {
        Ok(key) => {
            let vol =
                volume::Volume::new(f, path, &lh, key, true).expect("an unlocked volume opens");
            let mut buf = vec![0u8; vol.sector_size() as usize];
            if vol.size() >= buf.len() as u64 {
                vol.read_at(&mut buf, 0).expect("read of the first sector");
            }
            "unlocked".into()
        }
        Err(e) => kind(&e).into(),
    }
}

mod session {
    //! `nbd_session.rs`'s in-memory exports.
    use super::*;
    use nbdcrypt::nbd::{BlockExport, ExportConfig, Exports};

    struct Mem {
        data: Mutex<Vec<u8>>,
        min_block: u32,
    }

    impl BlockExport for Mem {
        fn size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn min_block_size(&self) -> u32 {
            self.min_block
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let d = self.data.lock().unwrap();
            let o = offset as usize;
            buf.copy_from_slice(&d[o..o + buf.len()]);
            Ok(())
        }
        fn write_at(&self, data: &[u8], offset: u64, _fua: bool) -> std::io::Result<()> {
            let mut d = self.data.lock().unwrap();
            let o = offset as usize;
            d[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> std::io::Result<()> {
            let mut d = self.data.lock().unwrap();
            let o = offset as usize;
            d[o..o + len as usize].fill(0);
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn mem(size: usize, min_block: u32) -> Arc<dyn BlockExport> {
        Arc::new(Mem {
            data: Mutex::new(vec![0u8; size]),
            min_block,
        })
    }

    pub fn exports() -> Arc<Exports> {
        let cfg = |name: &str, read_only| ExportConfig {
            name: name.into(),
            description: Some(format!("fuzz {name}")),
            read_only,
        };
        Arc::new(
            Exports::new(vec![
                (cfg("vol", false), mem(1 << 20, 512)),
                (cfg("ro", true), mem(64 << 10, 512)),
                (cfg("small", false), mem(64 << 10, 4096)),
            ])
            .unwrap(),
        )
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The `nbd_session` target; the class is `run_session`'s result: `ok` or `err`.
fn nbd_session(data: &[u8]) -> String {
    use nbdcrypt::nbd::{run_session, SessionOptions, SessionStats};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(64 << 10);
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let session = tokio::spawn(run_session(
            server,
            session::exports(),
            Arc::new(SessionStats::default()),
            SessionOptions::default(),
            stop_rx,
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 << 10];
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        for piece in data.chunks(4096) {
            if wr.write_all(piece).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
        drop(wr);
        let end = session.await.expect("session task panicked");
        drain.await.unwrap();
        if end.is_ok() { "ok" } else { "err" }.to_string()
    })
}

type Target = fn(&[u8]) -> String;

const TARGETS: [(&str, Target); 3] = [
    ("luks2_header", luks2_header),
    ("keyslot_unlock", keyslot_unlock),
    ("nbd_session", nbd_session),
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
