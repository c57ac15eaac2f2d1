//! `nbdcrypt open IMAGE --connect /dev/nbdN` and `nbdcrypt close /dev/nbdN`: the volume as a
//! kernel block device on this host, as `qemu-nbd --connect` and `qemu-nbd --disconnect` do.
//!
//! `open --connect` checks the device (missing: the `nbd` module is not loaded, named in the
//! error; connected already: busy) before asking for the passphrase, goes to the background
//! (unless `--foreground`), unlocks, connects the device to one end of a socket pair
//! ([`crate::nbd::kernel::connect`]: netlink, or the ioctls) and serves the other end from the
//! transmission phase, with the volume's sector size as the block size. The parent exits 0
//! once the device is usable. The server runs until the device is disconnected (`close`, or
//! SIGINT/SIGTERM/SIGHUP, which disconnect it), then flushes the volume, wipes the keys and
//! exits 0.
//!
//! `close` writes back the device's page cache (`fsync`, `BLKFLSBUF`, so the server gets the
//! data and a FLUSH), disconnects it, and waits until the nbdcrypt process serving it has
//! exited, so the image is consistent and unlocked when `close` returns.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::nbd::kernel::{self, Attached, DeviceParams, NbdDevice};
use crate::nbd::{self, proto, SessionStats, TlsMode};

use super::error::CliError;
use super::serve::{unlock_all, ImageExport};

/// `open IMAGE --connect DEVICE`; `foreground`: stay in the foreground (no fork);
/// `pid_file`: written once the device is connected, removed at exit; `inline_limit`:
/// `--inline-limit` (bytes, 0 = nothing served inline).
pub fn open_connect(
    export: ImageExport,
    device: &Path,
    foreground: bool,
    pid_file: Option<PathBuf>,
    inline_limit: u32,
) -> Result<(), CliError> {
    let dev = NbdDevice::new(device)?;
    dev.check_free()?;
    let mut ready = super::daemon::fork_if(!foreground)?;
    let (config, vol) = unlock_all(std::slice::from_ref(&export), false, TlsMode::Off)?
        .pop()
        .expect("one export");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the runtime: {e}")))?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| CliError::Usage(format!("socketpair: {e}")))?;
    ours.set_nonblocking(true)
        .map_err(|e| CliError::Usage(format!("socketpair: {e}")))?;
    let params = DeviceParams {
        size: vol.size(),
        block_size: vol.sector_size(),
        flags: proto::transmission_flags(config.read_only, false),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(SessionStats::default());
    // The server side runs before the kernel is connected: connecting already reads.
    let session = {
        let _guard = rt.enter();
        let stream = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| CliError::Usage(format!("socketpair: {e}")))?;
        let export = crate::export::VolumeExport::shared(vol.clone());
        let (name, read_only, stats) = (config.name.clone(), config.read_only, stats.clone());
        rt.spawn(async move {
            let inline = Some(inline_limit);
            nbd::run_transmission(stream, &name, export, read_only, stats, stop_rx, inline).await
        })
    };
    let theirs = OwnedFd::from(theirs);
    let attached = match kernel::connect(&dev, theirs.as_raw_fd(), params) {
        Ok(a) => a,
        Err(e) => {
            drop(theirs); // the session sees the end of its stream
            let _ = stop_tx.send(true);
            let _ = rt.block_on(session);
            return Err(e.into());
        }
    };
    drop(theirs); // the kernel holds its own reference
    let _pid_guard = match &pid_file {
        Some(p) => {
            nbd::server::write_pid_file(p)?;
            Some(nbd::server::PidFileGuard(p.clone()))
        }
        None => None,
    };
    tracing::info!(
        device = %dev.path.display(),
        image = %export.image.display(),
        size = params.size,
        block_size = params.block_size,
        interface = match attached { Attached::Netlink => "netlink", Attached::Ioctl { .. } => "ioctl" },
        "connected"
    );
    ready.ready();
    let ioctl_file = match &attached {
        Attached::Ioctl { file, .. } => Some(file),
        Attached::Netlink => None,
    };
    let result = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut session = session;
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return session.await;
        };
        tokio::select! {
            r = &mut session => return r,
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        tracing::info!(device = %dev.path.display(), "signal received: disconnecting");
        // The flush goes through the server, on the runtime's workers.
        let (d, f) = (dev.clone(), ioctl_file.map(|f| f.try_clone()));
        let r = tokio::task::spawn_blocking(move || {
            let _ = kernel::flush(&d);
            let f = f.and_then(|f| f.ok());
            kernel::disconnect(&d, f.as_ref())
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "disconnect failed");
        }
        session.await
    });
    match result {
        Ok(Ok(end)) => tracing::info!(
            device = %dev.path.display(),
            end = ?end,
            requests = stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            "disconnected"
        ),
        Ok(Err(e)) => tracing::warn!(device = %dev.path.display(), error = %e, "session ended"),
        Err(e) => tracing::warn!(error = %e, "session task failed"),
    }
    if let Attached::Ioctl { thread, .. } = attached {
        let _ = thread.join();
    }
    let _ = stop_tx.send(true);
    rt.shutdown_timeout(Duration::from_secs(1));
    vol.flush()?;
    match Arc::try_unwrap(vol) {
        Ok(vol) => {
            drop(vol);
            tracing::info!("stopped; keys wiped");
        }
        Err(_) => tracing::warn!("a stalled request still held the volume at exit"),
    }
    Ok(())
}

/// `close DEVICE` (and `open --disconnect DEVICE`): flush, disconnect, wait for the serving
/// nbdcrypt process to exit.
pub fn close(device: &Path) -> Result<(), CliError> {
    let dev = NbdDevice::new(device)?;
    let Some(tid) = dev.server_pid() else {
        return Err(kernel::KernelError::NotConnected(dev.path.clone()).into());
    };
    let owner = kernel::live_process(tid);
    kernel::flush(&dev)?;
    kernel::disconnect(&dev, None)?;
    if let Some((pid, name)) = owner {
        if name == "nbdcrypt" && pid != std::process::id() {
            tracing::debug!(pid, "waiting for the server to exit");
            let start = std::time::Instant::now();
            let mut told = false;
            while kernel::live_process(pid).is_some() {
                // Flushing a large image can take a while: say what we wait for.
                if !told && start.elapsed() > Duration::from_secs(5) {
                    eprintln!("waiting for nbdcrypt (pid {pid}) to flush and exit ...");
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    eprintln!("{}: disconnected", dev.path.display());
    Ok(())
}
