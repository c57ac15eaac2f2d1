//! Passphrase sources, as cryptsetup reads them (`cryptsetup(8)`, "NOTES ON PASSPHRASE
//! PROCESSING"): a key file byte for byte (`-` = all of stdin), else a no-echo terminal prompt,
//! else one line of a non-terminal stdin without its newline.

use std::io::{IsTerminal, Read};
use std::path::Path;

use zeroize::Zeroizing;

use super::error::CliError;
use crate::crypto::Passphrase;

/// Largest key file we read, bytes (cryptsetup's default `--keyfile-size` limit, 8 MiB).
const MAX_KEYFILE: u64 = 8 << 20;

/// Which passphrase is asked for at a terminal, in cryptsetup's words, so the user knows
/// whether the old or the new one, any slot's or a particular one, is wanted.
#[derive(Clone, Copy)]
pub enum Prompt<'a> {
    /// To unlock (open, serve, test-passphrase, wipe, escrow): "Enter passphrase for IMAGE: ".
    Unlock(&'a Path),
    /// The passphrase of any keyslot, proving authority to add one (add-key,
    /// recovery-key add, add-key --key-service): "Enter any existing passphrase: ".
    Existing,
    /// The passphrase whose keyslot change-key changes: "Enter passphrase to be changed: ".
    ToChange,
    /// The passphrase whose keyslot remove-key removes: "Enter passphrase to be deleted: ".
    ToDelete,
    /// The passphrase of a keyslot other than the one kill-slot wipes: "Enter any remaining
    /// passphrase: ".
    Remaining,
    /// A new passphrase for `format`, asked twice: "Enter passphrase for IMAGE: ".
    New(&'a Path),
    /// A new passphrase for an added keyslot, asked twice: "Enter new passphrase for key
    /// slot: ".
    NewSlot,
    /// The new passphrase of change-key, asked twice: "Enter new passphrase: ".
    Changed,
    /// A recovery key: "Enter recovery key for IMAGE: ".
    Recovery(&'a Path),
}

impl Prompt<'_> {
    /// The prompt's text, and whether the answer is asked again to verify it.
    pub fn text(&self) -> (String, bool) {
        match self {
            Prompt::Unlock(p) => (format!("Enter passphrase for {}: ", shown(p)), false),
            Prompt::Existing => ("Enter any existing passphrase: ".into(), false),
            Prompt::ToChange => ("Enter passphrase to be changed: ".into(), false),
            Prompt::ToDelete => ("Enter passphrase to be deleted: ".into(), false),
            Prompt::Remaining => ("Enter any remaining passphrase: ".into(), false),
            Prompt::New(p) => (format!("Enter passphrase for {}: ", shown(p)), true),
            Prompt::NewSlot => ("Enter new passphrase for key slot: ".into(), true),
            Prompt::Changed => ("Enter new passphrase: ".into(), true),
            Prompt::Recovery(p) => (format!("Enter recovery key for {}: ", shown(p)), false),
        }
    }
}

/// A path as a prompt shows it: control characters escaped (a file name can hold them).
fn shown(p: &Path) -> String {
    crate::format::escape_for_terminal(&p.display().to_string()).into_owned()
}

/// Read a passphrase from `key_file` or, without one, from the terminal or stdin.
///
/// Errors: [`CliError::KeyFileTooLarge`]; [`CliError::Usage`] for an unreadable or empty key
/// file, an empty passphrase, or a mismatch on the verify prompt.
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
            let (text, twice) = prompt.text();
            let ask = |text: String| {
                rpassword::prompt_password(text)
                    .map(Zeroizing::new)
                    .map_err(|e| CliError::Usage(format!("cannot read passphrase: {e}")))
            };
            let first = ask(text)?;
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
        return Err(CliError::KeyFileTooLarge {
            what: what.into(),
            limit: MAX_KEYFILE,
        });
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
            matches!(&err, CliError::KeyFileTooLarge { what, limit: MAX_KEYFILE } if what == "t"),
            "{err}"
        );
        // A short key holds one page, not the limit.
        assert!(read_limited(&b"passphrase k0"[..], "t").unwrap().capacity() <= 4096);
    }
}
