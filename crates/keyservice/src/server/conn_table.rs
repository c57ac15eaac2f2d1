//! Who gets a connection slot (`docs/keyservice-api.md` "Connection bounds"): the open
//! connections, each with its phase and since when, and the decision for a newcomer when all
//! `--max-connections` slots are taken. Pure state (time is passed in), so the decision is
//! unit-tested without a socket; the accept loop (`listen.rs`) acts on it.
//!
//! At the cap, a newcomer evicts the connection that has been *stalled* longest: still in its
//! TLS handshake or still sending its first request header, for at least `min_stall`; failing
//! that, the one *idle without a certificate* longest (served before, no request in progress,
//! no client certificate, for at least `min_stall`), so clients without a certificate that send
//! a request now and then (any can call `/v1/health`) cannot keep every slot from hosts. A
//! connection with a client certificate, or one in the middle of a request, is never evicted.
//! If no connection qualifies the newcomer is refused, so a burst of new connections cannot
//! evict each other before any had a chance to send a request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; the TLS handshake is not complete.
    Handshake,
    /// TLS is up; no complete request header has arrived yet.
    FirstHeader,
    /// At least one request was received, and either a request is in progress or the client
    /// presented a certificate.
    Served,
    /// Served before, no client certificate, and no request in progress: evictable once idle
    /// for `min_stall` (after every stalled connection).
    IdleAnonymous,
}

/// What to do with a newly accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A slot was free: the newcomer has id `.0`.
    Admit(u64),
    /// All slots were taken: connection `victim` is to be closed; the newcomer has id `new`.
    Evict {
        /// The evicted connection (already removed from the table).
        victim: u64,
        /// The newcomer's id.
        new: u64,
    },
    /// All slots were taken by connections that are not stalled: close the newcomer.
    Refuse,
}

/// One connection's phase and the instant it entered it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    phase: Phase,
    since: Instant,
}

/// The open connections and the cap.
#[derive(Debug)]
pub struct ConnTable {
    cap: usize,
    min_stall: Duration,
    next_id: u64,
    slots: BTreeMap<u64, Slot>,
}

impl ConnTable {
    /// A table of at most `cap` connections (at least 1); a connection is evictable once
    /// stalled for `min_stall`.
    pub fn new(cap: usize, min_stall: Duration) -> ConnTable {
        ConnTable {
            cap: cap.max(1),
            min_stall,
            next_id: 0,
            slots: BTreeMap::new(),
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether connection `id` is in the table.
    pub fn contains(&self, id: u64) -> bool {
        self.slots.contains_key(&id)
    }

    /// Decides on a connection accepted at `now` (in [`Phase::Handshake`] if admitted).
    pub fn admit(&mut self, now: Instant) -> Admission {
        let victim = if self.slots.len() < self.cap {
            None
        } else {
            match self
                .longest_in(now, &[Phase::Handshake, Phase::FirstHeader])
                .or_else(|| self.longest_in(now, &[Phase::IdleAnonymous]))
            {
                Some(v) => {
                    self.slots.remove(&v);
                    Some(v)
                }
                None => return Admission::Refuse,
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.slots.insert(
            id,
            Slot {
                phase: Phase::Handshake,
                since: now,
            },
        );
        match victim {
            None => Admission::Admit(id),
            Some(victim) => Admission::Evict { victim, new: id },
        }
    }

    /// The connection in one of `phases` longest, if for at least `min_stall`; ties go to the
    /// lowest id (the one accepted first).
    fn longest_in(&self, now: Instant, phases: &[Phase]) -> Option<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| phases.contains(&s.phase))
            .filter(|(_, s)| now.saturating_duration_since(s.since) >= self.min_stall)
            .min_by_key(|(id, s)| (s.since, **id))
            .map(|(id, _)| *id)
    }

    /// Connection `id` entered `phase` at `now` (no-op if it left the table or is already
    /// in that phase).
    pub fn set_phase(&mut self, id: u64, phase: Phase, now: Instant) {
        if let Some(s) = self.slots.get_mut(&id) {
            if s.phase != phase {
                *s = Slot { phase, since: now };
            }
        }
    }

    /// Connection `id` closed (no-op if already removed, e.g. evicted).
    pub fn remove(&mut self, id: u64) {
        self.slots.remove(&id);
    }
}

/// Over-cap events counted and reported at most once per interval, so a flood makes one log
/// line per interval instead of one per connection.
#[derive(Debug)]
pub struct OverCapLog {
    interval: Duration,
    last: Option<Instant>,
    evicted: u64,
    refused: u64,
}

/// The over-cap events since the previous report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCapSummary {
    /// Stalled connections closed to admit a newcomer.
    pub evicted: u64,
    /// Newcomers refused.
    pub refused: u64,
}

impl OverCapLog {
    /// Reports at most once per `interval`.
    pub fn new(interval: Duration) -> OverCapLog {
        OverCapLog {
            interval,
            last: None,
            evicted: 0,
            refused: 0,
        }
    }

    /// Counts `a` (ignored unless it is an eviction or a refusal) at `now`; returns the
    /// summary to log when a report is due (the first event, then at most once per interval).
    pub fn note(&mut self, a: Admission, now: Instant) -> Option<OverCapSummary> {
        match a {
            Admission::Admit(_) => return None,
            Admission::Evict { .. } => self.evicted += 1,
            Admission::Refuse => self.refused += 1,
        }
        let due = self
            .last
            .is_none_or(|l| now.saturating_duration_since(l) >= self.interval);
        if !due {
            return None;
        }
        self.last = Some(now);
        let s = OverCapSummary {
            evicted: self.evicted,
            refused: self.refused,
        };
        self.evicted = 0;
        self.refused = 0;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn below_the_cap_everyone_is_admitted() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(3, S);
        assert_eq!(t.admit(t0), Admission::Admit(0));
        assert_eq!(t.admit(t0), Admission::Admit(1));
        assert_eq!(t.admit(t0), Admission::Admit(2));
        assert_eq!(t.len(), 3);
        t.remove(1);
        assert_eq!(t.admit(t0), Admission::Admit(3));
    }

    #[test]
    fn at_the_cap_the_longest_stalled_is_evicted() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(3, S);
        t.admit(t0); // 0: stalls in the handshake
        t.admit(t0 + S); // 1: TLS done, then stalls in its first header
        t.admit(t0 + S); // 2: served
        t.set_phase(1, Phase::FirstHeader, t0 + S);
        t.set_phase(2, Phase::FirstHeader, t0 + S);
        t.set_phase(2, Phase::Served, t0 + S);
        let now = t0 + 5 * S;
        assert_eq!(t.admit(now), Admission::Evict { victim: 0, new: 3 });
        assert!(!t.contains(0));
        // Next: 1 (first header since t0+1s); 3 is too young; 2 is served.
        assert_eq!(t.admit(now), Admission::Evict { victim: 1, new: 4 });
        // 2 is served, 3 and 4 stalled for less than a second: refuse.
        assert_eq!(t.admit(now), Admission::Refuse);
        assert_eq!(t.len(), 3);
        // A second later 3 is the oldest stalled.
        assert_eq!(t.admit(now + S), Admission::Evict { victim: 3, new: 5 });
    }

    #[test]
    fn served_connections_are_never_evicted() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(2, S);
        for id in 0..2 {
            t.admit(t0);
            t.set_phase(id, Phase::Served, t0);
        }
        assert_eq!(t.admit(t0 + 1000 * S), Admission::Refuse);
    }

    #[test]
    fn idle_connections_without_a_certificate_go_after_the_stalled_ones() {
        // Every slot held by clients without a certificate that call now and then (between
        // calls: IdleAnonymous): a newcomer evicts the one idle longest, a stalled one first.
        let t0 = Instant::now();
        let mut t = ConnTable::new(3, S);
        for id in 0..3 {
            t.admit(t0);
            t.set_phase(id, Phase::Served, t0);
        }
        t.set_phase(0, Phase::IdleAnonymous, t0 + S);
        t.set_phase(1, Phase::IdleAnonymous, t0 + 2 * S);
        // 2 is in a request (Served): never evicted. 0 is idle longest.
        assert_eq!(t.admit(t0 + 5 * S), Admission::Evict { victim: 0, new: 3 });
        // 3 is stalled in its handshake for 2 s: it goes before the idle 1.
        assert_eq!(t.admit(t0 + 7 * S), Admission::Evict { victim: 3, new: 4 });
        assert_eq!(t.admit(t0 + 7 * S), Admission::Evict { victim: 1, new: 5 });
        // An anonymous client idle for less than min_stall is kept.
        t.set_phase(2, Phase::IdleAnonymous, t0 + 7 * S);
        assert_eq!(t.admit(t0 + 7 * S), Admission::Refuse);
    }

    #[test]
    fn a_stalled_flood_leaves_room_for_a_newcomer() {
        // 500 stalled connections into a table of 100: the flood itself is refused or evicts
        // older stalled ones, and a connection arriving a second later always gets a slot.
        let t0 = Instant::now();
        let mut t = ConnTable::new(100, S);
        for i in 0..500u32 {
            t.admit(t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(t.len(), 100);
        let later = t0 + Duration::from_millis(500) + S + S;
        assert!(matches!(t.admit(later), Admission::Evict { .. }));
    }

    #[test]
    fn over_cap_events_are_summarised_once_per_interval() {
        let t0 = Instant::now();
        let mut log = OverCapLog::new(10 * S);
        assert_eq!(log.note(Admission::Admit(1), t0), None);
        assert_eq!(
            log.note(Admission::Refuse, t0),
            Some(OverCapSummary {
                evicted: 0,
                refused: 1
            })
        );
        for _ in 0..99 {
            assert_eq!(log.note(Admission::Refuse, t0 + S), None);
        }
        assert_eq!(
            log.note(Admission::Evict { victim: 0, new: 1 }, t0 + S),
            None
        );
        assert_eq!(
            log.note(Admission::Refuse, t0 + 10 * S),
            Some(OverCapSummary {
                evicted: 1,
                refused: 100
            })
        );
    }
}
