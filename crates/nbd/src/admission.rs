//! Which connections the server takes, in two stages, so that clients still negotiating (or,
//! under `--tls require` with `--tls-ca`, not yet authenticated) can never starve the ones
//! that finished the handshake:
//!
//! 1. A newly accepted connection needs one of `max_handshakes` handshake slots. When they are
//!    all taken, the newcomer evicts the handshaking connection that has been silent longest,
//!    if it has received no byte for at least [`EVICT_SILENCE`] ([`pick_victim`]); otherwise
//!    the newcomer is closed at once. A client going through a handshake sends bytes within
//!    milliseconds of each server message, so only stalled sockets are evicted.
//! 2. When GO or EXPORT_NAME chooses an export, before the reply, the connection gives its
//!    handshake slot back and needs one of `max_connections` established slots, held until it
//!    closes; if none is free, GO is answered `NBD_REP_ERR_POLICY` (EXPORT_NAME has no error
//!    reply) and the connection is closed.
//!
//! [`Admission`] keeps the slots; a connection's [`HandshakeTicket`] is its handshake slot,
//! and [`Watched`] wraps its stream to note when it last received a byte.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Default of `--max-handshakes`: connections in the handshake at once. Each costs a socket
/// and a few KiB (tens of KiB during a TLS handshake), so the default is generous: hundreds of
/// stalled sockets leave room for legitimate clients even before eviction.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1000;

/// A handshaking connection may be evicted for a newcomer once it has received no byte for
/// this long.
pub const EVICT_SILENCE: Duration = Duration::from_secs(1);

/// Marks an activity clock whose connection finished its handshake (no longer tracked).
const DONE: u64 = u64::MAX;

/// Of `slots` (connection id, milliseconds at which it last received a byte), the one silent
/// longest, if silent for at least `min_silence` at `now_ms`. Ties: the lowest id (oldest).
pub fn pick_victim(
    slots: impl IntoIterator<Item = (u64, u64)>,
    now_ms: u64,
    min_silence: Duration,
) -> Option<u64> {
    let min = u64::try_from(min_silence.as_millis()).unwrap_or(u64::MAX);
    slots
        .into_iter()
        .filter(|&(_, last)| now_ms.saturating_sub(last) >= min)
        .min_by_key(|&(id, last)| (last, id))
        .map(|(id, _)| id)
}

/// One handshaking connection, as the table sees it.
struct Slot {
    activity: Arc<AtomicU64>,
    evict: Arc<Notify>,
}

/// The handshake and established slots of a server (shared by all its listeners).
pub struct Admission {
    epoch: Instant,
    max_handshakes: usize,
    handshaking: Mutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
    established: Option<Arc<Semaphore>>,
    max_connections: usize,
}

/// Why a connection was not taken (named by the flag that sets the limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every handshake slot is taken by a connection that is not silent enough to evict.
    Handshakes,
    /// The handshake finished but every established slot is taken.
    Connections,
}

impl Refusal {
    /// The command-line flag of the limit.
    pub fn flag(self) -> &'static str {
        match self {
            Refusal::Handshakes => "--max-handshakes",
            Refusal::Connections => "--max-connections",
        }
    }
}

impl Admission {
    /// Slots for `max_handshakes` connections in the handshake and `max_connections` past it
    /// (0: no limit, for either).
    pub fn new(max_handshakes: usize, max_connections: usize) -> Arc<Admission> {
        Arc::new(Admission {
            epoch: Instant::now(),
            max_handshakes,
            handshaking: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            established: (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections))),
            max_connections,
        })
    }

    /// The limits, `(max_handshakes, max_connections)`.
    pub fn limits(&self) -> (usize, usize) {
        (self.max_handshakes, self.max_connections)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(DONE - 1)
    }

    /// A handshake slot for a newly accepted connection. When all are taken, the longest
    /// silent handshaking connection (≥ [`EVICT_SILENCE`]) is told to close and its slot goes
    /// to the newcomer (the `bool` is then `true`). Errors: [`Refusal::Handshakes`].
    pub fn admit(self: &Arc<Self>) -> Result<(HandshakeTicket, bool), Refusal> {
        self.admit_at(self.now_ms())
    }

    /// [`admit`](Admission::admit) at `now` (milliseconds since the start).
    fn admit_at(self: &Arc<Self>, now: u64) -> Result<(HandshakeTicket, bool), Refusal> {
        let mut table = self.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = false;
        if self.max_handshakes > 0 && table.len() >= self.max_handshakes {
            let slots = table
                .iter()
                .map(|(&id, s)| (id, s.activity.load(Ordering::Relaxed)));
            let victim = pick_victim(slots, now, EVICT_SILENCE).ok_or(Refusal::Handshakes)?;
            let slot = table.remove(&victim).expect("picked from the table");
            slot.evict.notify_one();
            evicted = true;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(AtomicU64::new(now));
        let evict = Arc::new(Notify::new());
        table.insert(
            id,
            Slot {
                activity: activity.clone(),
                evict: evict.clone(),
            },
        );
        let ticket = HandshakeTicket {
            admission: self.clone(),
            id,
            clock: ActivityClock {
                epoch: self.epoch,
                last: activity,
            },
            evict,
        };
        Ok((ticket, evicted))
    }

    /// Connections in the handshake now.
    pub fn handshaking(&self) -> usize {
        self.handshaking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// A connection's handshake slot; given back when dropped or when the connection moves on
/// ([`HandshakeTicket::establish`]).
pub struct HandshakeTicket {
    admission: Arc<Admission>,
    id: u64,
    clock: ActivityClock,
    evict: Arc<Notify>,
}

/// Waits for a connection's eviction ([`HandshakeTicket::eviction`]).
pub struct Eviction(Arc<Notify>);

impl Eviction {
    /// Resolves once a newcomer has evicted the connection.
    pub async fn wait(&self) {
        self.0.notified().await
    }
}

/// An established slot, held until the connection closes (`None` inside: no limit).
pub struct EstablishedSlot(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl HandshakeTicket {
    /// The clock [`Watched`] updates on every byte the connection receives.
    pub fn clock(&self) -> ActivityClock {
        self.clock.clone()
    }

    /// Resolves once a newcomer has evicted this connection (its slot is already gone).
    pub async fn evicted(&self) {
        self.evict.notified().await
    }

    /// A handle that waits for this connection's eviction ([`Eviction::wait`]), usable while
    /// the ticket itself is lent elsewhere.
    pub fn eviction(&self) -> Eviction {
        Eviction(self.evict.clone())
    }

    /// The handshake is over: give the handshake slot back and take an established one.
    /// Errors: [`Refusal::Connections`] (every established slot is taken).
    pub fn establish(self) -> Result<EstablishedSlot, Refusal> {
        self.clock.last.store(DONE, Ordering::Relaxed);
        match &self.admission.established {
            None => Ok(EstablishedSlot(None)),
            Some(sem) => sem
                .clone()
                .try_acquire_owned()
                .map(|p| EstablishedSlot(Some(p)))
                .map_err(|_| Refusal::Connections),
        }
        // `self` drops here: the handshake slot is free.
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        let mut table = self
            .admission
            .handshaking
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // An evicted connection's slot is gone already (and may not be reused: ids are unique).
        table.remove(&self.id);
    }
}

/// When a handshaking connection last received a byte (milliseconds since the
/// [`Admission`]'s start).
#[derive(Clone)]
pub struct ActivityClock {
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl ActivityClock {
    fn touch(&self) {
        // After the handshake the clock stops: one relaxed load per read.
        if self.last.load(Ordering::Relaxed) != DONE {
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(DONE - 1);
            self.last.store(now, Ordering::Relaxed);
        }
    }
}

/// A stream that tells its [`ActivityClock`] whenever it receives bytes.
pub struct Watched<S> {
    inner: S,
    clock: ActivityClock,
}

impl<S> Watched<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, clock: ActivityClock) -> Watched<S> {
        Watched { inner, clock }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victim_is_the_longest_silent_past_the_threshold() {
        let s = Duration::from_secs(1);
        // Nobody silent for 1 s: no victim.
        assert_eq!(pick_victim([(1, 9_500), (2, 9_900)], 10_000, s), None);
        // The oldest activity wins; ties go to the lower id.
        assert_eq!(
            pick_victim([(1, 8_500), (2, 7_000), (3, 9_999)], 10_000, s),
            Some(2)
        );
        assert_eq!(pick_victim([(5, 1_000), (4, 1_000)], 10_000, s), Some(4));
        assert_eq!(pick_victim([(7, 9_000)], 10_000, s), Some(7), "exactly 1 s");
        assert_eq!(pick_victim([], 10_000, s), None);
    }

    #[tokio::test]
    async fn handshake_and_established_slots_are_counted_apart() {
        let a = Admission::new(2, 1);
        let (t1, _) = a.admit().unwrap();
        let (t2, _) = a.admit().unwrap();
        // Both handshake slots are taken by connections that just arrived: refused.
        assert_eq!(a.admit().err(), Some(Refusal::Handshakes));
        // One finishes its handshake: its handshake slot is free, an established one taken.
        let e1 = t1.establish().unwrap();
        assert_eq!(a.handshaking(), 1);
        let (t3, _) = a.admit().unwrap();
        // The established slot is taken: the next to finish is refused, its slot freed.
        assert_eq!(t2.establish().err(), Some(Refusal::Connections));
        assert_eq!(a.handshaking(), 1);
        drop(e1);
        assert!(t3.establish().is_ok());
        assert_eq!(a.handshaking(), 0);
    }

    #[tokio::test]
    async fn a_silent_handshake_is_evicted_for_a_newcomer() {
        let a = Admission::new(1, 0);
        let (stalled, _) = a.admit_at(1_000).unwrap();
        // 0.9 s later it is not silent enough; 1 s later it is.
        assert_eq!(a.admit_at(1_900).err(), Some(Refusal::Handshakes));
        let (fresh, evicted) = a.admit_at(2_000).expect("the silent one makes room");
        assert!(evicted);
        tokio::time::timeout(Duration::from_secs(1), stalled.evicted())
            .await
            .expect("the evicted connection is told");
        // The newcomer is active: the next one is refused.
        assert_eq!(a.admit_at(2_500).err(), Some(Refusal::Handshakes));
        drop(stalled); // does not free the newcomer's slot
        assert_eq!(a.handshaking(), 1);
        drop(fresh);
        assert_eq!(a.handshaking(), 0);
    }
}
