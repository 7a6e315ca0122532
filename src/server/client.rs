//! A minimal loopback HTTP/1.1 client for the load generator and the tests.
//!
//! - One request per connection, plain or chunked bodies, and a server-sent-events reader that
//!   hands out each `data:` payload as it arrives; no TLS, no redirects.

use std::io;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// An open response: status, headers read; the body is read on demand.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes left in the current chunk (chunked) or in the body (content-length).
    left: Option<usize>,
    ended: bool,
    line: Vec<u8>, // partial SSE line
}

/// Send `method path` with an optional JSON body to `addr` (host:port) and read the head.
pub async fn send(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<Response> {
    let mut s = TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let left = if chunked {
        Some(0)
    } else {
        header("content-length").and_then(|v| v.parse().ok())
    };
    Ok(Response {
        status,
        headers,
        reader,
        chunked,
        left,
        ended: false,
        line: Vec::new(),
    })
}

impl Response {
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of the body; None at its end.
    async fn piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.ended {
            return Ok(None);
        }
        if self.chunked && self.left == Some(0) {
            let mut size = String::new();
            self.reader.read_line(&mut size).await?;
            if size.trim().is_empty() {
                // the CRLF closing the previous chunk
                size.clear();
                self.reader.read_line(&mut size).await?;
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                self.ended = true;
                return Ok(None);
            }
            self.left = Some(n);
        }
        let want = match self.left {
            Some(0) if !self.chunked => {
                self.ended = true;
                return Ok(None);
            }
            Some(n) => n.min(64 * 1024),
            None => 64 * 1024,
        };
        let mut buf = vec![0u8; want];
        let got = self.reader.read(&mut buf).await?;
        if got == 0 {
            self.ended = true;
            return match self.left {
                Some(n) if n > 0 => Err(bad("connection closed inside the body".into())),
                _ => Ok(None),
            };
        }
        buf.truncate(got);
        if let Some(n) = self.left.as_mut() {
            *n -= got;
        }
        Ok(Some(buf))
    }

    /// The whole body.
    pub async fn body(mut self) -> io::Result<String> {
        let mut all = Vec::new();
        while let Some(p) = self.piece().await? {
            all.extend_from_slice(&p);
        }
        String::from_utf8(all).map_err(|e| bad(format!("body is not UTF-8: {e}")))
    }

    /// The next server-sent event's data; None when the stream ends.
    pub async fn next_event(&mut self) -> io::Result<Option<String>> {
        let mut data: Option<String> = None;
        loop {
            while let Some(nl) = self.line.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.line.drain(..=nl).collect();
                let l = String::from_utf8_lossy(&raw);
                let l = l.trim_end_matches(['\r', '\n']);
                if l.is_empty() {
                    if let Some(d) = data.take() {
                        return Ok(Some(d));
                    }
                } else if let Some(d) = l.strip_prefix("data:") {
                    let d = d.strip_prefix(' ').unwrap_or(d);
                    match data.as_mut() {
                        Some(acc) => {
                            acc.push('\n');
                            acc.push_str(d);
                        }
                        None => data = Some(d.to_string()),
                    }
                }
            }
            match self.piece().await? {
                Some(p) => self.line.extend_from_slice(&p),
                None => return Ok(data),
            }
        }
    }
}

/// GET `path` and return (status, body).
pub async fn get(addr: &str, path: &str) -> io::Result<(u16, String)> {
    let r = send(addr, "GET", path, None).await?;
    let status = r.status;
    Ok((status, r.body().await?))
}

/// POST a JSON body and return (status, body).
pub async fn post(addr: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
    let r = send(addr, "POST", path, Some(body)).await?;
    let status = r.status;
    Ok((status, r.body().await?))
}
