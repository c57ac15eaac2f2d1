//! Duplicate-member check for the LUKS2 JSON area (`format-spec.md` §3).
//!
//! `serde_json` keeps the last of two members with the same name in a map (keyslots,
//! segments, digests by id) without a word, while another parser may keep the first: a header
//! whose meaning depends on the parser is refused instead (a hostile header).

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

/// Any JSON value, walked only to find objects with a repeated member name.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(A::Error::custom(format!("duplicate member {key:?}")));
            }
            map.next_value::<Checked>()?;
            seen.insert(key);
        }
        Ok(Checked)
    }
}

/// The first member name that some JSON object in `json` repeats (at any depth), as a message
/// (`duplicate member "keyslots" at line 1 column 40`); `None` when there is none, or when the
/// text does not parse at all (the typed parse reports that).
pub fn duplicate_member(json: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Checked>(json) {
        Err(e) if e.is_data() => Some(e.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_member as check;

    #[test]
    fn duplicates_at_any_depth_are_found() {
        assert_eq!(check(br#"{"a":1,"b":{"c":[1,{"d":2,"e":null}]}}"#), None);
        let e = check(br#"{"a":1,"a":2}"#).unwrap();
        assert!(e.contains("duplicate member \"a\""), "{e}");
        assert!(check(br#"{"k":{"0":{},"1":{},"0":{}}}"#).is_some());
        assert!(check(br#"[{"x":true,"x":false}]"#).is_some());
        // the same name in different objects is fine; syntax errors are not ours to report
        assert_eq!(check(br#"{"a":{"x":1},"b":{"x":1}}"#), None);
        assert_eq!(check(b"{\"a\":\"\xff\"}"), None);
        assert_eq!(check(b"{not json"), None);
    }
}
