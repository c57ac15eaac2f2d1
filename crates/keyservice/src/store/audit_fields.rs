//! The cap on audit row fields (`docs/keyservice-api.md` "Audit log"): a field longer than
//! [`FIELD_CAP`] bytes is stored as its first characters, escaped, then its length and SHA-256,
//! so a caller cannot make the append-only log grow by more than a bounded amount per row
//! however long the path, header or body it sends.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::pki;

/// Longest field stored as it is, in bytes (UTF-8). Longer fields are capped.
pub const FIELD_CAP: usize = 256;

/// Bytes of escaped text kept from the start of a capped field.
pub const FIELD_PREFIX: usize = 64;

/// `field` as it goes into a row: unchanged when at most [`FIELD_CAP`] bytes; otherwise its
/// first characters escaped as Rust's `escape_debug` does (control characters and quotes
/// visible), at most [`FIELD_PREFIX`] bytes of them, then `…(N bytes, sha256 HEX)` with the
/// length and hex SHA-256 of the whole field. A capped field is under 200 bytes, so below the
/// cap itself: capping is idempotent.
pub fn cap_field(field: &str) -> Cow<'_, str> {
    if field.len() <= FIELD_CAP {
        return Cow::Borrowed(field);
    }
    let mut out = String::with_capacity(FIELD_PREFIX + 100);
    for c in field.chars() {
        let esc: String = c.escape_debug().collect();
        if out.len() + esc.len() > FIELD_PREFIX {
            break;
        }
        out.push_str(&esc);
    }
    out.push_str(&format!(
        "…({} bytes, sha256 {})",
        field.len(),
        pki::hex(&Sha256::digest(field.as_bytes()))
    ));
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_fields_are_kept_long_ones_capped_and_hashed() {
        assert_eq!(cap_field(""), "");
        let at_cap = "a".repeat(FIELD_CAP);
        assert_eq!(cap_field(&at_cap), at_cap.as_str());
        let long = format!("/v1/volumes/{}\n\"x", "b".repeat(60_000));
        let c = cap_field(&long);
        assert!(c.len() < 200, "{} bytes", c.len());
        assert!(c.starts_with("/v1/volumes/bbbb"), "{c}");
        let digest = pki::hex(&Sha256::digest(long.as_bytes()));
        assert!(
            c.ends_with(&format!("…({} bytes, sha256 {digest})", long.len())),
            "{c}"
        );
        // Idempotent: a capped field is below the cap.
        assert_eq!(cap_field(&c), c);
    }

    #[test]
    fn the_kept_prefix_is_escaped_and_cut_on_a_character() {
        let nasty = format!("\n\u{1b}[2J\u{202e}é{}", "\0".repeat(300));
        let c = cap_field(&nasty);
        let (prefix, _) = c.split_once('…').unwrap();
        assert!(prefix.len() <= FIELD_PREFIX);
        assert!(prefix.starts_with("\\n\\u{1b}[2J\\u{202e}é\\0"), "{prefix}");
        assert!(!prefix.chars().any(|ch| ch.is_control()), "{prefix:?}");
        let wide = "é".repeat(200);
        let c = cap_field(&wide);
        assert!(c.split_once('…').unwrap().0.len() <= FIELD_PREFIX);
    }
}
