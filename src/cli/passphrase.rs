//! Passphrase sources, as cryptsetup reads them (`cryptsetup(8)`, "NOTES ON PASSPHRASE
//! PROCESSING"): a key file byte for byte (`-` = all of stdin), else a no-echo terminal prompt,
//! else one line of a non-terminal stdin without its newline.

use std::io::{IsTerminal, Read};
use std::path::Path;

use zeroize::Zeroizing;

use crate::crypto::Passphrase;
use crate::volume::VolumeError;

use super::CliError;

/// Largest key file we read, bytes (cryptsetup's default `--keyfile-size` limit, 8 MiB).
const MAX_KEYFILE: u64 = 8 << 20;

/// Passphrase attempts at a terminal prompt (cryptsetup's `--tries` default).
const TRIES: u32 = 3;

/// Where the secret that unlocks a keyslot comes from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// A passphrase: from a key file, or (`None`) the terminal prompt / one stdin line.
    Passphrase(Option<&'a Path>),
    /// A recovery key (`format-spec.md` §9.1): from a file, or (`None`) prompted / one stdin
    /// line; checked group by group before any KDF runs.
    Recovery(Option<&'a Path>),
}

/// Read the secret from `source` and try it with `unlock`; at a terminal prompt a wrong
/// passphrase (or a mistyped recovery key) is asked again, up to three times in all.
///
/// Errors: as [`read_passphrase`]; [`CliError::Usage`] naming the mistyped group of a
/// recovery key; the last error of `unlock`.
pub fn unlock_with_tries<T>(
    source: Source<'_>,
    image: &Path,
    mut unlock: impl FnMut(&[u8]) -> Result<T, VolumeError>,
) -> Result<T, CliError> {
    let file = match source {
        Source::Passphrase(f) | Source::Recovery(f) => f,
    };
    let tries = if file.is_none() && std::io::stdin().is_terminal() {
        TRIES
    } else {
        1
    };
    let mut attempt = 1;
    loop {
        let pass = match source {
            Source::Passphrase(f) => read_passphrase(f, Prompt::Unlock(image))?,
            Source::Recovery(f) => {
                let typed = read_passphrase(f, Prompt::Recovery(image))?;
                match crate::crypto::recovery::parse(typed.expose()) {
                    Ok(k) => k,
                    Err(e) if attempt < tries => {
                        eprintln!("{e}");
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(CliError::Usage(e.to_string())),
                }
            }
        };
        match unlock(pass.expose()) {
            Err(VolumeError::WrongPassphrase) if attempt < tries => {
                eprintln!("{}", VolumeError::WrongPassphrase);
                attempt += 1;
            }
            Err(VolumeError::WrongPassphrase)
                if matches!(source, Source::Passphrase(_)) && pass.expose().ends_with(b"\n") =>
            {
                let file = file.map_or("stdin".into(), |f| f.display().to_string());
                return Err(CliError::Hinted(
                    Box::new(VolumeError::WrongPassphrase.into()),
                    format!("{file} ends with a newline, which is part of the passphrase; if it should not be, remove it (e.g. `truncate -s -1 {file}`)"),
                ));
            }
            r => return Ok(r?),
        }
    }
}

/// How the passphrase is asked for.
pub enum Prompt<'a> {
    /// Ask once: "Enter passphrase for IMAGE: ".
    Unlock(&'a Path),
    /// Ask twice and compare: a new passphrase for `format`.
    New(&'a Path),
    /// Ask once: "Enter recovery key for IMAGE: ".
    Recovery(&'a Path),
}

/// Read a passphrase from `key_file` or, without one, from the terminal or stdin.
///
/// Errors: [`CliError::Usage`] for an unreadable, empty or oversized key file, an empty
/// passphrase, or a mismatch on the verify prompt.
pub fn read_passphrase(
    key_file: Option<&Path>,
    prompt: Prompt<'_>,
) -> Result<Passphrase, CliError> {
    // Every buffer that holds the secret is zeroizing; `bytes` moves (no copy) into the result.
    let mut bytes = match key_file {
        Some(p) if p == Path::new("-") => read_limited(std::io::stdin().lock(), "stdin")?,
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|e| {
                CliError::Usage(format!("cannot read key file {}: {e}", p.display()))
            })?;
            read_limited(f, &p.display().to_string())?
        }
        None if std::io::stdin().is_terminal() => {
            let (what, path, twice) = match prompt {
                Prompt::Unlock(p) => ("passphrase", p, false),
                Prompt::New(p) => ("passphrase", p, true),
                Prompt::Recovery(p) => ("recovery key", p, false),
            };
            let ask = |text: String| {
                rpassword::prompt_password(text)
                    .map(Zeroizing::new)
                    .map_err(|e| CliError::Usage(format!("cannot read passphrase: {e}")))
            };
            let first = ask(format!("Enter {what} for {}: ", path.display()))?;
            if twice && *ask("Verify passphrase: ".into())? != *first {
                return Err(CliError::Usage("passphrases do not match".into()));
            }
            Zeroizing::new(first.as_bytes().to_vec())
        }
        None => {
            let mut line = read_limited(std::io::stdin().lock(), "stdin")?;
            if let Some(nl) = line.iter().position(|&c| c == b'\n') {
                line.truncate(nl); // Zeroizing wipes the whole capacity on drop
            }
            line
        }
    };
    let p = Passphrase::new(std::mem::take(&mut *bytes));
    if p.is_empty() {
        return Err(CliError::Usage(
            "the passphrase is empty (nothing to read on input)".into(),
        ));
    }
    Ok(p)
}

/// Read at most [`MAX_KEYFILE`] bytes into one buffer allocated up front, so no reallocation
/// leaves an unwiped copy of the key behind.
fn read_limited(mut r: impl Read, what: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let mut buf = Zeroizing::new(vec![0u8; MAX_KEYFILE as usize + 1]);
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CliError::Usage(format!("cannot read key from {what}: {e}"))),
        }
    }
    if n as u64 > MAX_KEYFILE {
        return Err(CliError::Usage(format!(
            "key file {what} is larger than {MAX_KEYFILE} bytes"
        )));
    }
    buf.truncate(n);
    Ok(buf)
}
