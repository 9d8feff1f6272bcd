//! An HTTP/1.1 answer: the [`Reply`] an endpoint (or a refusal) makes, and how it is written.

use std::io::{self, Write};

/// An answer: status, body and the few headers the service sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u32>,
    /// The methods the path takes, for 405.
    pub allow: Option<String>,
}

impl Reply {
    pub fn json(status: u16, body: &impl serde::Serialize) -> Reply {
        match serde_json::to_vec(body) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                Reply {
                    status,
                    content_type: "application/json",
                    body: bytes,
                    retry_after: None,
                    allow: None,
                }
            }
            // Only a non-UTF-8 path could get here; a client should still get an answer.
            Err(e) => Reply::error(500, format!("serializing the answer: {e}")),
        }
    }

    /// `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(status, &serde_json::json!({"error": message.into()}))
    }

    pub fn text(body: String) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: body.into_bytes(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Reply {
        self.retry_after = Some(seconds);
        self
    }

    /// `methods`: comma-separated, as the `Allow` header lists them.
    pub fn allow(mut self, methods: String) -> Reply {
        self.allow = Some(methods);
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes `reply` as one buffer (one syscall for small answers).
pub fn write_reply(w: &mut impl Write, reply: &Reply, close: bool) -> io::Result<()> {
    let mut out = Vec::with_capacity(160 + reply.body.len());
    write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    )?;
    if let Some(s) = reply.retry_after {
        write!(out, "Retry-After: {s}\r\n")?;
    }
    if let Some(methods) = &reply.allow {
        write!(out, "Allow: {methods}\r\n")?;
    }
    if reply.status == 401 {
        out.extend_from_slice(b"WWW-Authenticate: Bearer\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&reply.body);
    w.write_all(&out)?;
    w.flush()
}
