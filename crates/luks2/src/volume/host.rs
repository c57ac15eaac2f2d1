//! What the host machine offers the volume layer: memory sizes from `/proc/meminfo` (the cap
//! on Argon2 memory when creating a keyslot, the limit when unlocking one).

/// A field of `/proc/meminfo` in KiB (e.g. `MemTotal`, `MemAvailable`), if readable.
pub(crate) fn meminfo_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
