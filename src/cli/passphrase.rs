//! Passphrase sources, as cryptsetup reads them (`cryptsetup(8)`, "NOTES ON PASSPHRASE
//! PROCESSING"): a key file byte for byte (`-` = all of stdin), else a no-echo terminal prompt,
//! else one line of a non-terminal stdin without its newline.

use std::io::{IsTerminal, Read};
use std::path::Path;

use crate::crypto::Passphrase;

use super::CliError;

/// Largest key file we read, bytes (cryptsetup's default `--keyfile-size` limit, 8 MiB).
const MAX_KEYFILE: u64 = 8 << 20;

/// How the passphrase is asked for.
pub enum Prompt<'a> {
    /// Ask once: "Enter passphrase for IMAGE: ".
    Unlock(&'a Path),
    /// Ask twice and compare: a new passphrase for `format`.
    New(&'a Path),
}

/// Read a passphrase from `key_file` or, without one, from the terminal or stdin.
///
/// Errors: [`CliError::Usage`] for an unreadable, empty or oversized key file, an empty
/// passphrase, or a mismatch on the verify prompt.
pub fn read_passphrase(
    key_file: Option<&Path>,
    prompt: Prompt<'_>,
) -> Result<Passphrase, CliError> {
    let bytes = match key_file {
        Some(p) if p == Path::new("-") => read_limited(std::io::stdin().lock(), "stdin")?,
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|e| {
                CliError::Usage(format!("cannot read key file {}: {e}", p.display()))
            })?;
            read_limited(f, &p.display().to_string())?
        }
        None if std::io::stdin().is_terminal() => {
            let (path, twice) = match prompt {
                Prompt::Unlock(p) => (p, false),
                Prompt::New(p) => (p, true),
            };
            let first =
                rpassword::prompt_password(format!("Enter passphrase for {}: ", path.display()))
                    .map_err(|e| CliError::Usage(format!("cannot read passphrase: {e}")))?;
            if twice {
                let second = rpassword::prompt_password("Verify passphrase: ")
                    .map_err(|e| CliError::Usage(format!("cannot read passphrase: {e}")))?;
                if first != second {
                    return Err(CliError::Usage("passphrases do not match".into()));
                }
                drop(zeroize::Zeroizing::new(second));
            }
            zeroize::Zeroizing::new(first).as_bytes().to_vec()
        }
        None => {
            let mut line = read_limited(std::io::stdin().lock(), "stdin")?;
            if let Some(nl) = line.iter().position(|&c| c == b'\n') {
                zeroize::Zeroize::zeroize(&mut line[nl..]);
                line.truncate(nl);
            }
            line
        }
    };
    let p = Passphrase::new(bytes);
    if p.is_empty() {
        return Err(CliError::Usage(
            "the passphrase is empty (nothing to read on input)".into(),
        ));
    }
    Ok(p)
}

fn read_limited(r: impl Read, what: &str) -> Result<Vec<u8>, CliError> {
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    r.take(MAX_KEYFILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::Usage(format!("cannot read key from {what}: {e}")))?;
    if buf.len() as u64 > MAX_KEYFILE {
        return Err(CliError::Usage(format!(
            "key file {what} is larger than {MAX_KEYFILE} bytes"
        )));
    }
    Ok(std::mem::take(&mut *buf))
}
