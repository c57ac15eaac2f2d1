//! Bearer and join tokens read from a file or stdin (`--token-file FILE`, `-` for stdin), so
//! that a token never has to appear on a command line, where every local user can read it in
//! the process list.

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

/// The longest token file accepted, in bytes (tokens are well under 100 bytes).
pub const MAX_TOKEN_FILE: usize = 4096;

/// Reads a token from `path` (`-` = stdin): the file's text with one trailing newline
/// (`\n` or `\r\n`) removed, held in a zeroizing buffer.
///
/// Errors: the file cannot be read, is longer than [`MAX_TOKEN_FILE`], is not UTF-8, is empty,
/// or holds a control character (a second line, say) besides that newline; the message names
/// the file.
pub fn read_token_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let name = if path == Path::new("-") {
        "stdin".to_string()
    } else {
        path.display().to_string()
    };
    let r = if path == Path::new("-") {
        token_from(std::io::stdin().lock())
    } else {
        std::fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(token_from)
    };
    r.map_err(|e| format!("cannot read the token from {name}: {e}"))
}

/// The token in `r`'s text, as [`read_token_file`] takes it.
fn token_from(r: impl Read) -> Result<Zeroizing<String>, String> {
    // Capacity fixed up front so that reading never reallocates (and so never leaves a copy).
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_TOKEN_FILE + 1));
    r.take(MAX_TOKEN_FILE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() > MAX_TOKEN_FILE {
        return Err(format!("longer than {MAX_TOKEN_FILE} bytes"));
    }
    let mut t: &[u8] = &buf;
    if let Some(s) = t.strip_suffix(b"\n") {
        t = s.strip_suffix(b"\r").unwrap_or(s);
    }
    let s = std::str::from_utf8(t).map_err(|_| "not UTF-8 text".to_string())?;
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.chars().any(char::is_control) {
        return Err("it holds more than one line or a control character".into());
    }
    Ok(Zeroizing::new(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_trimmed() {
        for (input, want) in [
            (&b"nbj_abc"[..], "nbj_abc"),
            (b"nbj_abc\n", "nbj_abc"),
            (b"nbj_abc\r\n", "nbj_abc"),
            (b" nbj_abc ", " nbj_abc "),
        ] {
            assert_eq!(token_from(input).unwrap().as_str(), want);
        }
    }

    #[test]
    fn bad_token_files_are_refused() {
        let long = vec![b'a'; MAX_TOKEN_FILE + 1];
        for input in [
            &b""[..],
            b"\n",
            b"nbj_abc\n\n",
            b"nbj_abc\nsecond",
            b"\xff\xfe",
            &long,
        ] {
            assert!(token_from(input).is_err(), "{input:?}");
        }
        assert!(token_from(&vec![b'a'; MAX_TOKEN_FILE][..]).is_ok());
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = read_token_file(Path::new("/nonexistent/t.token")).unwrap_err();
        assert!(e.contains("/nonexistent/t.token"), "{e}");
    }
}
