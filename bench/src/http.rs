//! A small HTTP/1.1 JSON client over one keep-alive loopback connection:
//! enough for iotmock's REST API (Content-Length or chunked bodies), with
//! nothing between the measurement and the socket.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One request's answer: status and JSON body (`Null` when empty, a
/// string when not JSON).
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

pub struct Http {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// Longest any one request may take.
    pub timeout: Duration,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            conn: None,
            timeout: Duration::from_secs(120),
        }
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.request("GET", path, None).await
    }

    pub async fn post(&mut self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.request("POST", path, Some(body)).await
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let limit = self.timeout;
        let reused = self.conn.is_some();
        match tokio::time::timeout(limit, self.exchange(method, path, body)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(first)) if !reused => {
                self.conn = None;
                Err(first.context(format!("{method} {path}")))
            }
            Ok(Err(first)) => {
                // A keep-alive connection the server closed: one retry on
                // a fresh one.
                self.conn = None;
                tokio::time::timeout(limit, self.exchange(method, path, body))
                    .await
                    .with_context(|| format!("{method} {path}: no answer within {limit:?}"))?
                    .with_context(|| format!("{method} {path} (first try: {first:#})"))
            }
            Err(_) => {
                self.conn = None;
                bail!("{method} {path}: no answer within {limit:?}")
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\n",
            self.addr
        );
        if method != "GET" {
            request.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        conn.get_mut().write_all(request.as_bytes()).await?;

        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut bytes = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                let start = bytes.len();
                bytes.resize(start + size, 0);
                conn.read_exact(&mut bytes[start..]).await?;
                line.clear();
                conn.read_line(&mut line).await?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            bytes.resize(n, 0);
            conn.read_exact(&mut bytes).await?;
        } else if status != 204 && status != 304 {
            conn.read_to_end(&mut bytes).await?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(Answer { status, body })
    }
}
