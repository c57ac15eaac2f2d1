//! Aggregation of unauthenticated refusals (`docs/keyservice-api.md` "Audit log"): a pure
//! state object with the time passed in. Per source (peer IP, an IPv6 /64, or client
//! certificate fingerprint), action and refusal, the first refusal in a window is written at
//! once; the rest are counted in memory and written as one row `×N` when the window ends (the
//! server's one-second tick), when a new window starts, when the entry is evicted to make room
//! (the table holds at most a fixed number, the oldest goes first), or at shutdown.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::store::AuditEntry;

/// What aggregation is keyed on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggKey {
    /// `cert:FINGERPRINT`, `ip:ADDRESS`, `ip:PREFIX/64`, or `unknown`.
    pub source: String,
    /// The refused action.
    pub action: String,
    /// The refusal's audit outcome (`refused STATUS: KIND`).
    pub outcome: String,
}

/// The source name of a caller: its client certificate's fingerprint if it sent one, else its
/// IP address (IPv4, or an IPv4-mapped IPv6 address as IPv4; other IPv6 addresses by their
/// /64, which one host usually holds whole), else `unknown`.
pub fn source_of(fingerprint: Option<&str>, ip: Option<IpAddr>) -> String {
    if let Some(f) = fingerprint {
        return format!("cert:{f}");
    }
    match ip.map(|a| a.to_canonical()) {
        Some(IpAddr::V4(a)) => format!("ip:{a}"),
        Some(IpAddr::V6(a)) => {
            let s = a.segments();
            let p = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("ip:{p}/64")
        }
        None => "unknown".into(),
    }
}

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Write its row now (the first of its window).
    Write,
    /// Counted; its row will be part of a later `×N` row.
    Counted,
}

/// One open window.
struct Pending {
    start_ms: i64,
    last_ms: i64,
    /// Refusals counted after the first (which was written).
    count: u64,
    /// The last counted refusal's row (its target and detail go into the `×N` row).
    last: Option<AuditEntry>,
}

/// The open windows, at most `max_keys`.
pub struct RefusalAggregator {
    window_ms: i64,
    max_keys: usize,
    open: HashMap<AggKey, Pending>,
}

impl RefusalAggregator {
    /// Windows of `window_ms` milliseconds, at most `max_keys` open (both at least 1).
    pub fn new(window_ms: i64, max_keys: usize) -> RefusalAggregator {
        RefusalAggregator {
            window_ms: window_ms.max(1),
            max_keys: max_keys.max(1),
            open: HashMap::new(),
        }
    }

    /// Open windows.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no window is open.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Admits refusal `entry` of `key` at `now_ms`. Returns what to do with it, and the `×N`
    /// rows of windows it closed (its own ended one, or the oldest evicted to make room), to
    /// be written before it.
    pub fn admit(
        &mut self,
        key: AggKey,
        entry: &AuditEntry,
        now_ms: i64,
    ) -> (Admission, Vec<AuditEntry>) {
        let mut out = Vec::new();
        if let Some(p) = self.open.get_mut(&key) {
            if now_ms < p.start_ms.saturating_add(self.window_ms) {
                p.count += 1;
                p.last_ms = now_ms;
                p.last = Some(entry.clone());
                return (Admission::Counted, out);
            }
            if let Some(p) = self.open.remove(&key) {
                out.extend(summary(&key, p));
            }
        } else if self.open.len() >= self.max_keys {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, p)| p.start_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                let p = self.open.remove(&k).expect("key just found");
                out.extend(summary(&k, p));
            }
        }
        self.open.insert(
            key,
            Pending {
                start_ms: now_ms,
                last_ms: now_ms,
                count: 0,
                last: None,
            },
        );
        (Admission::Write, out)
    }

    /// Closes the windows that ended by `now_ms`; returns their `×N` rows.
    pub fn due(&mut self, now_ms: i64) -> Vec<AuditEntry> {
        let ended: Vec<AggKey> = self
            .open
            .iter()
            .filter(|(_, p)| now_ms >= p.start_ms.saturating_add(self.window_ms))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in ended {
            if let Some(p) = self.open.remove(&k) {
                out.extend(summary(&k, p));
            }
        }
        out
    }

    /// Closes every window (shutdown); returns their `×N` rows.
    pub fn drain(&mut self) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for (k, p) in self.open.drain() {
            out.extend(summary(&k, p));
        }
        out
    }
}

/// The `×N` row of a closed window, if it counted anything: the last refusal's actor, action,
/// target and outcome; detail `×N more from SOURCE in T ms after the first (written at once);
/// last: DETAIL`.
fn summary(key: &AggKey, p: Pending) -> Option<AuditEntry> {
    let last = p.last?;
    Some(AuditEntry {
        detail: format!(
            "×{} more from {} in {} ms after the first (written at once); last: {}",
            p.count,
            key.source,
            p.last_ms - p.start_ms,
            last.detail
        ),
        ..last
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(detail: &str) -> AuditEntry {
        AuditEntry {
            actor: "anonymous".into(),
            action: "unwrap".into(),
            target: String::new(),
            outcome: "refused 401: no-credentials".into(),
            detail: detail.into(),
        }
    }

    fn key(source: &str) -> AggKey {
        AggKey {
            source: source.into(),
            action: "unwrap".into(),
            outcome: "refused 401: no-credentials".into(),
        }
    }

    #[test]
    fn a_thousand_refusals_in_one_window_are_two_rows() {
        let mut a = RefusalAggregator::new(60_000, 16);
        let mut written = 0;
        for i in 0..1000 {
            let (adm, closed) = a.admit(key("ip:192.0.2.7"), &refusal(&format!("n{i}")), i);
            assert!(closed.is_empty());
            written += usize::from(adm == Admission::Write);
        }
        assert_eq!(written, 1);
        assert!(a.due(59_999).is_empty());
        let rows = a.due(60_000);
        assert_eq!(rows.len(), 1);
        assert!(
            rows[0]
                .detail
                .starts_with("×999 more from ip:192.0.2.7 in 999 ms"),
            "{}",
            rows[0].detail
        );
        assert!(rows[0].detail.ends_with("last: n999"));
        assert!(a.is_empty());
    }

    #[test]
    fn refusals_spread_over_windows_are_bounded_per_window() {
        // One refusal every 100 ms for 1000 refusals (100 s), 60 s windows: per window one row
        // at once and one `×N` row.
        let mut a = RefusalAggregator::new(60_000, 16);
        let mut rows = 0;
        let mut counted = 0u64;
        for i in 0..1000i64 {
            let (adm, closed) = a.admit(key("ip:192.0.2.7"), &refusal("x"), i * 100);
            rows += closed.len() + usize::from(adm == Admission::Write);
            counted += u64::from(adm == Admission::Counted);
            rows += a.due(i * 100).len();
        }
        rows += a.drain().len();
        assert_eq!(rows, 4);
        assert_eq!(counted, 998);
    }

    #[test]
    fn a_new_window_first_writes_the_old_ones_count() {
        let mut a = RefusalAggregator::new(1000, 16);
        a.admit(key("ip:192.0.2.7"), &refusal("a"), 0);
        a.admit(key("ip:192.0.2.7"), &refusal("b"), 10);
        let (adm, closed) = a.admit(key("ip:192.0.2.7"), &refusal("c"), 5000);
        assert_eq!(adm, Admission::Write);
        assert_eq!(closed.len(), 1);
        assert!(closed[0].detail.starts_with("×1 more"));
        // A window that counted nothing leaves no row.
        assert!(a.due(9000).is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest() {
        let mut a = RefusalAggregator::new(60_000, 3);
        for (t, s) in ["ip:a", "ip:b", "ip:c"].iter().enumerate() {
            a.admit(key(s), &refusal("x"), t as i64);
            a.admit(key(s), &refusal("y"), t as i64);
        }
        let (adm, closed) = a.admit(key("ip:d"), &refusal("z"), 10);
        assert_eq!(adm, Admission::Write);
        assert_eq!(a.len(), 3);
        assert_eq!(closed.len(), 1);
        assert!(
            closed[0].detail.contains("from ip:a"),
            "{}",
            closed[0].detail
        );
        // Every other source and kind is its own key.
        let other = AggKey {
            outcome: "refused 401: bad-token".into(),
            ..key("ip:b")
        };
        assert_eq!(a.admit(other, &refusal("w"), 11).0, Admission::Write);
        assert_eq!(a.drain().len(), 1, "ip:c still counted one");
    }

    #[test]
    fn sources() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(source_of(None, Some(v4)), "ip:192.0.2.7");
        assert_eq!(source_of(None, Some(mapped)), "ip:192.0.2.7");
        assert_eq!(source_of(None, Some(v6)), "ip:2001:db8:1:2::/64");
        assert_eq!(source_of(Some("ab12"), Some(v4)), "cert:ab12");
        assert_eq!(source_of(None, None), "unknown");
    }
}
