//! Small async helpers shared by the handshake and the transmission phase: discarding data
//! the client sent, and waiting for the shutdown signal.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// Resolves once the shutdown flag is true; never if the sender is gone.
pub(super) async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Read and drop `len` bytes. Errors: `UnexpectedEof` if the stream ends first.
pub(super) async fn discard<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> io::Result<()> {
    let n = tokio::io::copy(&mut r.take(len), &mut tokio::io::sink()).await?;
    if n < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// One read into `buf` that must bring bytes within `limit` (`None`: waits as long as it
/// takes). Errors: `TimedOut` when none arrived in time; `UnexpectedEof` at end of stream.
async fn read_some_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    limit: Option<std::time::Duration>,
) -> io::Result<usize> {
    let n = match limit {
        Some(l) => tokio::time::timeout(l, r.read(buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??,
        None => r.read(buf).await?,
    };
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(n)
}

/// `read_exact` in which every read must bring bytes within `limit` (the idle limit): a client
/// that stalls in the middle of a request header or a WRITE payload is closed like an idle one
/// instead of holding its connection (and the payload's buffer budget) for ever. `None`: no
/// limit. Errors: `TimedOut`, `UnexpectedEof`, the stream's.
pub(super) async fn read_exact_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    limit: Option<std::time::Duration>,
) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        done += read_some_within(r, &mut buf[done..], limit).await?;
    }
    Ok(())
}

/// [`discard`] under the same rule as [`read_exact_within`].
pub(super) async fn discard_within<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
    limit: Option<std::time::Duration>,
) -> io::Result<()> {
    if limit.is_none() {
        return discard(r, len).await;
    }
    let mut scratch = [0u8; 8192];
    let mut left = len;
    while left > 0 {
        let want = scratch
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        left -= read_some_within(r, &mut scratch[..want], limit).await? as u64;
    }
    Ok(())
}
