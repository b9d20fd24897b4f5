//! HTTP over a bare TCP socket, for what a well-behaved client cannot do:
//! send half a request, stall, or hold a connection idle.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::WAIT;

/// Reads until the server closes the connection (or resets it); what it
/// sent, and how long that took.
pub async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open for {WAIT:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

/// True when the server has not closed `stream` (nothing to read, no EOF).
pub async fn still_open(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf))
        .await
        .is_err()
}
