//! Escaping of header strings for a terminal. Every string of a header (label, subsystem,
//! UUID, token and keyslot types, cipher and hash names, any JSON string) is attacker
//! controlled; printed raw, a newline forges a line of output and an escape sequence drives
//! the terminal. Human-readable output and messages quote them through [`escape_for_terminal`]
//! (or [`Printable`]); JSON output needs nothing more (serde escapes control characters).

use std::borrow::Cow;
use std::fmt;

/// Whether `c` is written as an escape: C0 controls (newline, CR, tab, backspace, ESC, …),
/// DEL, C1 controls, the Unicode line and paragraph separators and the bidirectional
/// formatting characters (which reorder the text shown around them).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every control or bidirectional formatting character written as an escape:
/// `\n`, `\r`, `\t`, `\xNN` for the other characters below U+0100 (`\x1b` for ESC, `\x7f`
/// for DEL, `\x9b` for CSI), `\u{NNNN}` above. Anything else, backslash included, is kept,
/// so a string with nothing to escape is returned unchanged (and escaping is idempotent).
pub fn escape_for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` with each of its lines escaped by [`escape_for_terminal`], the newlines between
/// them kept: for a message that is multi-line by design and may quote header strings.
pub fn escape_lines_for_terminal(text: &str) -> String {
    text.split('\n')
        .map(escape_for_terminal)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A header string displayed through [`escape_for_terminal`]: `format!("{}", Printable(s))`.
#[derive(Debug, Clone, Copy)]
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape_for_terminal(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::{escape_for_terminal, escape_lines_for_terminal, Printable};

    #[test]
    fn escape_table() {
        let table: &[(&str, &str)] = &[
            ("", ""),
            ("aes-xts-plain64", "aes-xts-plain64"),
            ("luks2-keyring", "luks2-keyring"),
            ("label with spaces", "label with spaces"),
            ("étiquette ✓ 鍵", "étiquette ✓ 鍵"),
            (r"back\slash \n", r"back\slash \n"),
            ("a\nb", r"a\nb"),
            ("a\r\n", r"a\r\n"),
            ("\t", r"\t"),
            ("\x1b[2J", r"\x1b[2J"),
            ("x\x08y", r"x\x08y"),
            ("\0", r"\x00"),
            ("\x7f", r"\x7f"),
            ("\u{9b}31m", r"\x9b31m"),
            ("\u{85}", r"\x85"),
            ("abc\u{202e}fed", r"abc\u{202e}fed"),
            ("\u{2066}\u{2069}", r"\u{2066}\u{2069}"),
            ("\u{200f}\u{061c}", r"\u{200f}\u{061c}"),
            ("line\u{2028}sep", r"line\u{2028}sep"),
        ];
        for (input, want) in table {
            assert_eq!(escape_for_terminal(input), *want, "{input:?}");
            assert_eq!(Printable(input).to_string(), *want, "{input:?}");
            // Idempotent: an escaped string has nothing left to escape.
            assert_eq!(escape_for_terminal(want), *want, "{want:?}");
        }
    }

    #[test]
    fn escape_lines_keeps_newlines() {
        assert_eq!(escape_lines_for_terminal("a\n  b"), "a\n  b");
        assert_eq!(
            escape_lines_for_terminal("x\x1b[2J\ny\r"),
            "x\\x1b[2J\ny\\r"
        );
    }
}
