//! `nbdcrypt wipe` and `format --wipe`: encrypted zeros over the whole data segment, with a
//! progress bar on a terminal (plain lines otherwise), stopped cleanly by SIGINT or SIGTERM
//! and resumed with `--resume` (`format-spec.md` §10).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::volume::{self, LoadedHeader, OpenedImage, UnlockedKey, Volume, WipeState};

use super::args::{HeaderArg, KeyArgs};
use super::error::CliError;
use super::passphrase::Prompt;
use super::unlock::{open_loaded, try_unlock, unlock_with_tries};

/// `nbdcrypt wipe`.
#[derive(clap::Args)]
pub struct WipeArgs {
    /// Image file.
    image: PathBuf,
    #[command(flatten)]
    header: HeaderArg,
    #[command(flatten)]
    key: KeyArgs,
    /// Continue an interrupted wipe where it stopped (from IMAGE.nbdcrypt-wipe).
    #[arg(long)]
    resume: bool,
}

impl WipeArgs {
    /// Runs `wipe`: unlock, then [`wipe_volume`].
    pub fn run(self) -> Result<(), CliError> {
        let (image, key) = (self.image, self.key);
        let (o, lh) = open_loaded(
            &image,
            self.header.header.as_deref(),
            volume::Access::WriteExclusive,
        )?;
        let k = unlock_with_tries(
            &key.unlock.source(),
            &image,
            Prompt::Unlock(&image),
            |pass| try_unlock(&o.header, &o.header_path, &lh, pass, key.key_slot),
        )?;
        wipe_volume(o, &lh, k, &image, self.resume)
    }
}

/// Set by the signal handler while a wipe runs.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set [`STOP`] while this lives; the previous handlers come back on drop.
struct StopOnSignal {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl StopOnSignal {
    fn install() -> StopOnSignal {
        STOP.store(false, Ordering::SeqCst);
        let mut old = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: zeroed sigaction is valid; the handler only stores to an atomic, which is
            // async-signal-safe.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut prev: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut prev) == 0 {
                    old.push((sig, prev));
                }
            }
        }
        StopOnSignal { old }
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: restores the action saved by `install`.
            unsafe { libc::sigaction(*sig, prev, std::ptr::null_mut()) };
        }
    }
}

/// Progress: an `indicatif` bar (bytes, rate, time left) on a terminal, else a plain line
/// every [`PLAIN_EVERY`].
enum Reporter {
    Bar(indicatif::ProgressBar),
    Plain {
        size: u64,
        start: u64,
        began: Instant,
        last: Instant,
    },
}

/// Interval of the plain progress lines.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

impl Reporter {
    fn new(size: u64, start: u64) -> Reporter {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(size).with_position(start);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "wiping [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec}, {eta} left",
                )
                .expect("valid template"),
            );
            bar.reset_eta();
            Reporter::Bar(bar)
        } else {
            let now = Instant::now();
            Reporter::Plain {
                size,
                start,
                began: now,
                last: now,
            }
        }
    }

    fn update(&mut self, done: u64) {
        match self {
            Reporter::Bar(b) => b.set_position(done),
            Reporter::Plain {
                size,
                start,
                began,
                last,
            } => {
                if last.elapsed() < PLAIN_EVERY {
                    return;
                }
                *last = Instant::now();
                let secs = began.elapsed().as_secs_f64().max(1e-3);
                let rate = mib(done - *start) / secs;
                let left = if rate > 0.0 {
                    mib(*size - done) / rate
                } else {
                    0.0
                };
                eprintln!(
                    "wipe: {:.0} of {:.0} MiB ({:.0}%), {rate:.0} MiB/s, about {left:.0} s left",
                    mib(done),
                    mib(*size),
                    100.0 * done as f64 / (*size).max(1) as f64
                );
            }
        }
    }

    fn finish(self) {
        if let Reporter::Bar(b) = self {
            b.abandon();
        }
    }
}

/// Wipe the unlocked volume of `o` (opened read-write): from the start, or with `resume` from
/// the state file's `done` (a state file of another volume is refused). See the module doc.
///
/// Errors: [`CliError::Interrupted`] (exit 130) when stopped by a signal, naming how to
/// resume; volume errors otherwise.
pub fn wipe_volume(
    o: OpenedImage,
    lh: &LoadedHeader,
    key: UnlockedKey,
    image: &Path,
    resume: bool,
) -> Result<(), CliError> {
    let header_flag = if o.detached {
        format!(" --header {}", o.header_path.display())
    } else {
        String::new()
    };
    let vol = Volume::new(o.data, image, lh, key, false)?;
    let size = vol.size();
    let fresh = WipeState {
        uuid: lh.header.uuid.clone(),
        size,
        sector_size: vol.sector_size(),
        done: 0,
    };
    let state_path = volume::wipe_state_path(image);
    let state = match (resume, volume::read_wipe_state(image)?) {
        (true, Some(s)) => {
            if (WipeState {
                done: 0,
                ..s.clone()
            }) != fresh
            {
                return Err(CliError::Usage(format!(
                    "{} belongs to another volume, or the volume changed (UUID {}, {} bytes, sector {}); remove it to wipe from the start",
                    state_path.display(),
                    s.uuid,
                    s.size,
                    s.sector_size
                )));
            }
            eprintln!(
                "resuming the wipe of {} at {} of {size} bytes",
                image.display(),
                s.done
            );
            s
        }
        (true, None) => {
            eprintln!(
                "no interrupted wipe to resume ({} does not exist): wiping from the start",
                state_path.display()
            );
            fresh
        }
        (false, Some(s)) => {
            eprintln!(
                "note: an earlier wipe stopped at {} bytes ({}); starting over (--resume continues it)",
                s.done,
                state_path.display()
            );
            fresh
        }
        (false, None) => fresh,
    };
    let start = state.done;
    let began = Instant::now();
    let mut reporter = Reporter::new(size, start);
    let result = {
        let _signals = StopOnSignal::install();
        volume::wipe(&vol, image, state, &STOP, &mut |d| reporter.update(d))
    };
    reporter.finish();
    let done = result?;
    if done < size {
        return Err(CliError::Interrupted(format!(
            "wipe of {} interrupted at {done} of {size} bytes (saved in {}); run `nbdcrypt wipe {}{header_flag} --resume` to continue",
            image.display(),
            state_path.display(),
            image.display()
        )));
    }
    let secs = began.elapsed().as_secs_f64().max(1e-3);
    let rate = mib(size - start) / secs;
    let xts = super::benchmark::xts_encrypt_mib_per_s(vol.sector_size() as usize)?;
    eprintln!(
        "wiped {} ({:.0} MiB) in {secs:.1} s: {rate:.0} MiB/s, {:.0}% of the {xts:.0} MiB/s XTS encryption alone reaches on this machine at {}-byte sectors (`nbdcrypt benchmark`); the rest is storage and sync time",
        image.display(),
        mib(size - start),
        100.0 * rate / xts.max(1e-3),
        vol.sector_size()
    );
    Ok(())
}
