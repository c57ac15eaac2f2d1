//! Recovery keys in BitLocker's recovery-password format (`format-spec.md` §9.1): 48 decimal
//! digits in 8 groups of 6, each group a 16-bit value times 11 — so every group is divisible by
//! 11 and below 720896, which catches a mistyped group before any KDF runs. 128 bits of entropy.
//! The canonical text (groups joined by `-`) is the keyslot passphrase.

use zeroize::Zeroizing;

use super::{random_bytes, CryptoError, SecretBytes};

/// Number of 6-digit groups.
pub const GROUPS: usize = 8;
/// Each group is `value × 11` with `value` < 2^16, so it is below this bound.
pub const GROUP_BOUND: u32 = 65536 * 11;

/// Why a typed recovery key is refused; names the group (1-based) where it can.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecoveryKeyError {
    /// Not 48 digits in 8 groups of 6.
    #[error("a recovery key is 48 digits in 8 groups of 6 (found {digits} digits)")]
    Shape {
        /// Digits found.
        digits: usize,
    },
    /// A character other than a digit or a separator (`-`, space).
    #[error("a recovery key holds only digits, dashes and spaces (found {0:?})")]
    Character(char),
    /// A group fails its check: mistyped. (Its digits are not repeated: they are secret.)
    #[error("recovery key group {group} is mistyped: each group must be divisible by 11 and below 720896")]
    Group {
        /// 1-based group number.
        group: usize,
    },
}

/// A fresh random recovery key, canonical text `dddddd-dddddd-…` (55 bytes).
///
/// Errors: [`CryptoError::Random`] if the system RNG fails.
pub fn generate() -> Result<SecretBytes, CryptoError> {
    let raw = Zeroizing::new(random_bytes(2 * GROUPS)?);
    let groups: Zeroizing<Vec<u32>> = Zeroizing::new(
        raw.chunks(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])) * 11)
            .collect(),
    );
    Ok(canonical(&groups))
}

/// The groups as `dddddd-dddddd-…`, written straight into the secret buffer.
fn canonical(groups: &[u32]) -> SecretBytes {
    let mut text = Vec::with_capacity(7 * GROUPS - 1);
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            text.push(b'-');
        }
        let mut div = 100_000;
        while div > 0 {
            text.push(b'0' + (g / div % 10) as u8);
            div /= 10;
        }
    }
    SecretBytes::new(text)
}

/// Parse a typed recovery key: digits with any of `-`, spaces or tabs between them (trailing
/// newline ignored), checked group by group; returns the canonical text.
///
/// Errors: [`RecoveryKeyError::Shape`] for any other character or a digit count other than 48,
/// [`RecoveryKeyError::Group`] naming the first group that fails its check.
pub fn parse(typed: &[u8]) -> Result<SecretBytes, RecoveryKeyError> {
    let mut digits = Zeroizing::new(Vec::with_capacity(48));
    for &c in typed {
        match c {
            b'0'..=b'9' => digits.push(c - b'0'),
            b'-' | b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => return Err(RecoveryKeyError::Character(char::from(c))),
        }
    }
    if digits.len() != 6 * GROUPS {
        return Err(RecoveryKeyError::Shape {
            digits: digits.len(),
        });
    }
    let groups: Zeroizing<Vec<u32>> = Zeroizing::new(
        digits
            .chunks(6)
            .map(|g| g.iter().fold(0u32, |acc, d| acc * 10 + u32::from(*d)))
            .collect(),
    );
    for (i, g) in groups.iter().enumerate() {
        if g % 11 != 0 || *g >= GROUP_BOUND {
            return Err(RecoveryKeyError::Group { group: i + 1 });
        }
    }
    Ok(canonical(&groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_have_the_shape() {
        for _ in 0..50 {
            let k = generate().unwrap();
            let text = std::str::from_utf8(k.expose()).unwrap().to_string();
            assert_eq!(text.len(), 55);
            let groups: Vec<&str> = text.split('-').collect();
            assert_eq!(groups.len(), 8);
            for g in &groups {
                let v: u32 = g.parse().unwrap();
                assert_eq!(g.len(), 6);
                assert_eq!(v % 11, 0);
                assert!(v < GROUP_BOUND);
            }
            assert_eq!(parse(text.as_bytes()).unwrap().expose(), k.expose());
            let spaced = text.replace('-', " ") + "\n";
            assert_eq!(parse(spaced.as_bytes()).unwrap().expose(), k.expose());
        }
    }

    #[test]
    fn mistyped_groups_are_named() {
        let good = "000011-000022-720885-000000-123453-654324-000110-099000";
        assert!(parse(good.as_bytes()).is_ok());
        assert_eq!(
            parse(b"000011-000022-720885-000000-123454-654324-000110-099000").unwrap_err(),
            RecoveryKeyError::Group { group: 5 }
        );
        // Divisible by 11 but not below 65536 * 11.
        assert_eq!(
            parse(b"720896-000022-720885-000000-123453-654324-000110-099000").unwrap_err(),
            RecoveryKeyError::Group { group: 1 }
        );
        assert!(matches!(
            parse(b"000011-000022"),
            Err(RecoveryKeyError::Shape { digits: 12 })
        ));
        assert_eq!(
            parse(b"00001x-000022-720885-000000-123453-654324-000110-099000").unwrap_err(),
            RecoveryKeyError::Character('x')
        );
    }
}
