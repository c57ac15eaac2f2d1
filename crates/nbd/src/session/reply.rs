//! Transmission-phase replies as the writer sends them: a queued [`Reply`] (simple, or the
//! chunks of a structured reply, plus any READ data) holding its request's permits until sent,
//! the vectored write of a reply, and the mapping of an export call's result to an NBD error
//! value ([`Errno`]).

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;

use crate::proto::{self, Errno};

/// A queued reply (simple, or the chunks of a structured reply); holds its request's permits
/// until written.
pub(super) struct Reply {
    /// Simple reply header, or the chunk header(s) before `data`.
    pub(super) head: Vec<u8>,
    /// READ data, sent after `head`.
    pub(super) data: Vec<u8>,
    pub(super) _permits: Option<Permits>,
}

/// What a request holds until its reply is written: its in-flight slot, its bytes of the
/// connection's budget and, when the server has one, its bytes of the server-wide budget
/// ([`crate::budget`]).
pub(super) struct Permits {
    pub(super) _request: OwnedSemaphorePermit,
    pub(super) _bytes: OwnedSemaphorePermit,
    pub(super) _shared: Option<OwnedSemaphorePermit>,
}

impl Reply {
    #[inline]
    pub(super) fn new(head: Vec<u8>, data: Vec<u8>) -> Reply {
        Reply {
            head,
            data,
            _permits: None,
        }
    }

    /// An error reply: simple, or an `NBD_REPLY_TYPE_ERROR` chunk with `DONE` and a message.
    pub(super) fn error(structured: bool, err: Errno, cookie: u64) -> Reply {
        let head = if structured {
            proto::encode_error_chunk(err, cookie, err.message())
        } else {
            proto::encode_simple_reply(Some(err), cookie).to_vec()
        };
        Reply::new(head, Vec::new())
    }

    /// Success without data: simple, or a `NBD_REPLY_TYPE_NONE` chunk with `DONE`.
    #[inline]
    pub(super) fn ok(structured: bool, cookie: u64) -> Reply {
        let head = if structured {
            proto::encode_none_chunk(cookie).to_vec()
        } else {
            proto::encode_simple_reply(None, cookie).to_vec()
        };
        Reply::new(head, Vec::new())
    }

    /// Success (`Ok`) or error without data.
    #[inline]
    pub(super) fn status(structured: bool, r: Result<(), Errno>, cookie: u64) -> Reply {
        match r {
            Ok(()) => Reply::ok(structured, cookie),
            Err(err) => Reply::error(structured, err, cookie),
        }
    }
}

/// The outcome of an export call run on the blocking pool (or inline, wrapped in `Ok`) as an
/// NBD error value ([`Errno`]'s `From<&io::Error>`: a full disk or quota is `ENOSPC`, any
/// other failure `EIO`); a panic is `EIO`. Failures are logged.
pub(super) fn errno_of<T>(r: &Result<io::Result<T>, tokio::task::JoinError>) -> Result<(), Errno> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            warn!(error = %e, "export I/O error");
            Err(Errno::from(e))
        }
        Err(e) => {
            warn!(error = %e, "export call panicked");
            Err(Errno::Eio)
        }
    }
}

/// [`errno_of`] for the `*_unless` writes: a write skipped because the connection was
/// abandoned is `EIO` (the reply goes nowhere).
pub(super) fn errno_of_write(
    r: &Result<io::Result<bool>, tokio::task::JoinError>,
) -> Result<(), Errno> {
    match r {
        Ok(Ok(false)) => Err(Errno::Eio),
        other => errno_of(other),
    }
}

/// Send `head` then `data` (as `write_all` does each): both in one vectored write where the
/// transport takes them, so a large READ reply's header and payload reach the client
/// together (smaller replies are gathered in the writer's buffer as before).
pub(super) async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    head: &[u8],
    data: &[u8],
) -> io::Result<()> {
    let (mut head, mut data) = (head, data);
    while !head.is_empty() && !data.is_empty() {
        let n = match w
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(data)])
            .await
        {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n.min(head.len() + data.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let h = n.min(head.len());
        head = &head[h..];
        data = &data[n - h..];
    }
    w.write_all(head).await?;
    w.write_all(data).await
}
