//! Where the volume's I/O meets the image file (`pread`/`pwrite`/`fdatasync`, its length),
//! and the two test hooks that act there, both honoured only in debug builds (the tests'
//! binary) and ignored in release builds:
//!
//! - [`FAULT_IO_ENV`] lists faults to inject, as `OP@N=FAULT` separated by commas: the `N`th
//!   call (from 1, counted per operation in this process) of `OP` (`read`, `write`, `sync`)
//!   fails with `FAULT`: `EIO`, `ENOSPC`, or `short` (a write that stores only its first half,
//!   then fails with `ENOSPC`, as a filling disk does). Example:
//!   `write@3=EIO,write@5=short,sync@2=EIO,read@4=EIO`.
//! - [`FAULT_STEP_ENV`] (the crash-step hook, `format-spec.md` §7.8) aborts the process right
//!   after the N-th write or sync *step* of a header update ([`write_step`], [`sync_step`]),
//!   as a power cut would stop it.
//!
//! The data path ([`super::Volume`]) uses the plain calls; header updates use the steps.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use super::error::VolumeError;

/// The environment variable read by the fault injector (debug builds only).
pub const FAULT_IO_ENV: &str = "NBDCRYPT_FAULT_IO";

/// Environment variable of the crash test hook: with `NBDCRYPT_FAULT_STEP=N` the process aborts
/// right after the N-th write or sync step of a header update (counting from 1), as a power cut
/// would stop it. Honoured only in debug builds (the tests' binary), never in a release build.
pub const FAULT_STEP_ENV: &str = "NBDCRYPT_FAULT_STEP";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read = 0,
    Write = 1,
    Sync = 2,
}

#[derive(Clone, Copy)]
enum Fault {
    Errno(i32),
    Short,
}

struct Plan {
    rules: Vec<(Op, u64, Fault)>,
    calls: [AtomicU64; 3],
}

fn parse(spec: &str) -> Plan {
    let mut rules = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parsed = item.split_once('@').and_then(|(op, rest)| {
            let (n, fault) = rest.split_once('=')?;
            let op = match op {
                "read" => Op::Read,
                "write" => Op::Write,
                "sync" => Op::Sync,
                _ => return None,
            };
            let fault = match fault {
                "EIO" => Fault::Errno(libc::EIO),
                "ENOSPC" => Fault::Errno(libc::ENOSPC),
                "short" => Fault::Short,
                _ => return None,
            };
            Some((op, n.parse().ok()?, fault))
        });
        match parsed {
            Some(r) => rules.push(r),
            None => eprintln!("nbdcrypt: {FAULT_IO_ENV}: ignoring {item:?}"),
        }
    }
    Plan {
        rules,
        calls: Default::default(),
    }
}

/// The fault for this call of `op`, if one is planned.
fn fault(op: Op) -> Option<Fault> {
    if !cfg!(debug_assertions) {
        return None;
    }
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    let plan = PLAN
        .get_or_init(|| std::env::var(FAULT_IO_ENV).ok().map(|s| parse(&s)))
        .as_ref()?;
    let n = plan.calls[op as usize].fetch_add(1, Ordering::SeqCst) + 1;
    let f = plan.rules.iter().find(|r| r.0 == op && r.1 == n)?.2;
    tracing::warn!("fault injection: {FAULT_IO_ENV} fails call {n} of this operation");
    Some(f)
}

/// `pread` all of `buf` from byte `at` (`FileExt::read_exact_at`), or an injected fault.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    match fault(Op::Read) {
        Some(Fault::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
        Some(Fault::Short) => Err(io::ErrorKind::UnexpectedEof.into()),
        None => file.read_exact_at(buf, at),
    }
}

/// `pwrite` all of `buf` at byte `at` (`FileExt::write_all_at`), or an injected fault.
pub(crate) fn write_all_at(file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    match fault(Op::Write) {
        Some(Fault::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
        Some(Fault::Short) => {
            file.write_all_at(&buf[..buf.len() / 2], at)?;
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        None => file.write_all_at(buf, at),
    }
}

/// `fdatasync` (`File::sync_data`), or an injected fault (`short` counts as `EIO`).
pub(crate) fn sync_data(file: &File) -> io::Result<()> {
    match fault(Op::Sync) {
        Some(Fault::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
        Some(Fault::Short) => Err(io::Error::from_raw_os_error(libc::EIO)),
        None => file.sync_data(),
    }
}

/// Length in bytes of the open image `file` at `path`.
///
/// Errors: [`VolumeError::Device`] when its metadata cannot be read.
pub(crate) fn image_len(file: &File, path: &Path) -> Result<u64, VolumeError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| VolumeError::Device {
            path: path.to_owned(),
            source: e,
        })
}

static STEPS: AtomicU32 = AtomicU32::new(0);

/// Count one step of a header update; with [`FAULT_STEP_ENV`] set to this step's number (debug
/// builds), abort the process.
fn step(what: &str) {
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    if !cfg!(debug_assertions) {
        return;
    }
    if let Some(stop) = std::env::var(FAULT_STEP_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        if n == stop {
            eprintln!("nbdcrypt: fault injection: stopping after step {n} ({what})");
            std::process::abort();
        }
    }
}

/// Write `data` at byte `at` of the image: one step. Errors: [`VolumeError::Io`] (`write`).
pub(crate) fn write_step(
    file: &File,
    path: &Path,
    data: &[u8],
    at: u64,
    what: &str,
) -> Result<(), VolumeError> {
    write_all_at(file, data, at).map_err(|e| VolumeError::Io {
        op: "write",
        path: path.to_owned(),
        offset: at,
        source: e,
    })?;
    step(what);
    Ok(())
}

/// Read all of `buf` from byte `at` of the image, through the fault hook as the writes and
/// syncs are (not a numbered step: a read changes nothing). Errors: [`VolumeError::Io`] with
/// `op` (what was being read, e.g. `"read keyslot area"`) and `at`.
pub(crate) fn read_step(
    file: &File,
    path: &Path,
    buf: &mut [u8],
    at: u64,
    op: &'static str,
) -> Result<(), VolumeError> {
    read_exact_at(file, buf, at).map_err(|e| VolumeError::Io {
        op,
        path: path.to_owned(),
        offset: at,
        source: e,
    })
}

/// `fdatasync` the image: one step. Errors: [`VolumeError::Io`] (`fdatasync`).
pub(crate) fn sync_step(file: &File, path: &Path, what: &str) -> Result<(), VolumeError> {
    sync_data(file).map_err(|e| VolumeError::Io {
        op: "fdatasync",
        path: path.to_owned(),
        offset: 0,
        source: e,
    })?;
    step(what);
    Ok(())
}
