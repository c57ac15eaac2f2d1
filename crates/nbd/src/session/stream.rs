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
