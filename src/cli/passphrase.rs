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

/// Read at most [`MAX_KEYFILE`] bytes. The buffer starts at one page and doubles into a fresh
/// allocation, the old one wiped (`Zeroizing`) before it is freed, so no reallocation leaves an
/// unwiped copy of the key behind, and a key costs memory for its own size: a buffer of
/// [`MAX_KEYFILE`] up front made every run fault in, lock page by page (the `Passphrase` keeps
/// the capacity) and wipe 8 MiB per key read.
fn read_limited(mut r: impl Read, what: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let limit = MAX_KEYFILE as usize + 1;
    let mut buf = Zeroizing::new(vec![0u8; 4096]);
    let mut n = 0;
    loop {
        if n == buf.len() {
            if n == limit {
                break;
            }
            let mut bigger = Zeroizing::new(vec![0u8; (2 * n).min(limit)]);
            bigger[..n].copy_from_slice(&buf[..n]);
            buf = bigger;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `.1` bytes a call.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let k = self.1.min(buf.len()).min(self.0.len());
            buf[..k].copy_from_slice(&self.0[..k]);
            self.0 = &self.0[k..];
            Ok(k)
        }
    }

    #[test]
    fn read_limited_reads_up_to_the_limit_and_refuses_more() {
        let max = MAX_KEYFILE as usize;
        let data: Vec<u8> = (0..max + 1).map(|i| (i * 7 + i / 251) as u8).collect();
        for len in [0, 1, 13, 4095, 4096, 4097, 100_000, max] {
            for chunk in [1000, 1 << 20] {
                let got = read_limited(Trickle(&data[..len], chunk), "t").unwrap();
                assert!(got[..] == data[..len], "len {len} chunk {chunk}");
            }
        }
        let err = read_limited(Trickle(&data, 1 << 20), "t").unwrap_err();
        assert!(
            err.to_string().contains("larger than 8388608 bytes"),
            "{err}"
        );
        // A short key holds one page, not the limit.
        assert!(read_limited(&b"passphrase k0"[..], "t").unwrap().capacity() <= 4096);
    }
}
