//! Closing a connection the way its peer can read. When the server ends a
//! connection while the peer is still sending (the rest of an HTTP body
//! refused with 413, an MQTT client's last publishes after a DISCONNECT),
//! closing the socket with unread data makes the kernel reset it, and a
//! reset can overtake the answer the peer has not read yet. So after its
//! last write and its shutdown, the server reads and drops what still
//! comes, for a moment, before it lets the socket go. One helper for the
//! broker and the HTTP listeners.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads and drops what `io` still delivers, until end of stream, an
/// error, `within` or `max_bytes`, whichever comes first.
pub(crate) async fn drain<R: AsyncRead + Unpin>(io: &mut R, within: Duration, max_bytes: usize) {
    // On the heap: a buffer on the future's stack would make every task
    // that may end in a drain (each MQTT connection) 8 KiB larger for its
    // whole life, not only while it drains.
    let mut sink = vec![0u8; 8 * 1024];
    let mut left = max_bytes;
    let _ = tokio::time::timeout(within, async {
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
