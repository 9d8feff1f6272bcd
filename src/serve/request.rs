//! An HTTP/1.1 request as it arrives on one connection: the [`Transport`] it is read from, the
//! head parsed by `httparse` within a size ([`MAX_HEAD`]) and a deadline ([`HEAD_TIMEOUT`]), the
//! routing of its method and path to an [`Endpoint`], and the body, read within
//! [`BODY_TIMEOUT`] once the request was routed, authorised and admitted (`super::wire`).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::reply::Reply;
use super::rollout::MAX_HEAD_BYTES;

/// Longest a request head may take to arrive (from its first byte, or from the end of the
/// previous answer on a kept-alive connection, which is also how long an idle one is kept).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request body may take to arrive once its head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;
/// Bodies of endpoints that take none are read and dropped up to this size (a client may send
/// `{}` with its POST); beyond it, 413.
pub const MAX_IGNORED_BODY: usize = 4096;
/// Bodies larger than this are refused (413) without being read: no camera image is this big.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// A byte stream with a deadline on reads.
pub trait Transport: Read + Write {
    /// Reads after `deadline` fail with [`io::ErrorKind::TimedOut`].
    fn set_read_deadline(&mut self, deadline: Instant);
}

/// The endpoints, as routing finds them from the method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Latest,
    Healthz,
    Metrics,
    Classify,
    Reload,
    /// `PUT /head`: install a head ([`super::rollout`]).
    Head,
    /// `POST /rollback`: put the previous head back.
    Rollback,
}

/// A routed request, as [`Api::call`] gets it.
#[derive(Debug)]
pub struct Request {
    pub endpoint: Endpoint,
    /// What follows `?` in the request target ("" when nothing does).
    pub query: String,
    pub body: Vec<u8>,
}

/// The routing table: each endpoint's path and method. 404 and 405 answers, and the `Allow`
/// header of a 405, come from it.
const ROUTES: [(&str, &str, Endpoint); 7] = [
    ("/latest", "GET", Endpoint::Latest),
    ("/healthz", "GET", Endpoint::Healthz),
    ("/metrics", "GET", Endpoint::Metrics),
    ("/classify", "POST", Endpoint::Classify),
    ("/reload", "POST", Endpoint::Reload),
    ("/head", "PUT", Endpoint::Head),
    ("/rollback", "POST", Endpoint::Rollback),
];

impl Endpoint {
    /// The endpoint for `method` on `path` (the query string already cut), or the 404/405 answer;
    /// a 405 names the methods the path takes in `Allow` (RFC 9110, 15.5.6).
    pub fn route(method: &str, path: &str) -> Result<Endpoint, Reply> {
        let on_path = || ROUTES.iter().filter(|(p, _, _)| *p == path);
        if let Some((_, _, endpoint)) = on_path().find(|(_, m, _)| *m == method) {
            return Ok(*endpoint);
        }
        let allowed: Vec<&str> = on_path().map(|(_, m, _)| *m).collect();
        if allowed.is_empty() {
            return Err(Reply::error(
                404,
                format!("no such endpoint: {}", printable(path)),
            ));
        }
        Err(Reply::error(
            405,
            format!("{} is not allowed on {path}", printable(method)),
        )
        .allow(allowed.join(", ")))
    }

    /// The largest body the endpoint reads; bodies of the others are dropped up to
    /// [`MAX_IGNORED_BODY`].
    pub fn max_body(self) -> usize {
        match self {
            Endpoint::Classify => MAX_BODY,
            // A head file; novelty prototypes make a large one several MB.
            Endpoint::Head => MAX_HEAD_BYTES as usize,
            _ => MAX_IGNORED_BODY,
        }
    }
}

/// What stops a request head from being read.
pub(super) enum HeadError {
    /// The connection closed, or stayed idle, before a request began: close quietly.
    Idle,
    Answer(Reply),
}

/// A parsed request head (owned, so the buffer can be read on).
pub(super) struct Head {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: String,
    pub(super) content_length: usize,
    pub(super) close: bool,
    pub(super) expect_continue: bool,
    pub(super) authorization: Option<Vec<u8>>,
}

/// Reads more bytes into `buf`; 0 means the peer closed.
fn fill<T: Transport>(t: &mut T, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let want = chunk.len().min(max.saturating_sub(buf.len()).max(1));
    loop {
        match t.read(&mut chunk[..want]) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into())
            }
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn read_head<T: Transport>(t: &mut T, buf: &mut Vec<u8>) -> Result<Head, HeadError> {
    loop {
        // Bytes left over from the previous request (pipelining) are parsed before reading more.
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = head_of(&req)?;
                    buf.drain(..len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                    return Err(HeadError::Answer(Reply::error(
                        431,
                        format!("request head larger than {MAX_HEAD} bytes"),
                    )))
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(HeadError::Answer(Reply::error(
                        431,
                        format!("more than {MAX_HEADERS} headers"),
                    )))
                }
                Err(e) => {
                    return Err(HeadError::Answer(Reply::error(
                        400,
                        format!("malformed request: {e}"),
                    )))
                }
            }
        }
        match fill(t, buf, MAX_HEAD) {
            Ok(0) | Err(_) if buf.is_empty() => return Err(HeadError::Idle),
            Ok(0) => return Err(HeadError::Idle),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(HeadError::Answer(Reply::error(
                    408,
                    format!("the request head did not arrive within {HEAD_TIMEOUT:?}"),
                )))
            }
            Err(_) => return Err(HeadError::Idle),
        }
    }
}

fn head_of(req: &httparse::Request<'_, '_>) -> Result<Head, HeadError> {
    let bad = |status: u16, message: &str| HeadError::Answer(Reply::error(status, message));
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(bad(400, "malformed request line"));
    };
    let mut content_length: Option<usize> = None;
    let mut close = version == 0;
    let mut expect_continue = false;
    let mut authorization = None;
    for h in req.headers.iter() {
        let value = h.value.trim_ascii();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| bad(400, "invalid Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(bad(400, "conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(411, "send the body with a Content-Length, not chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for option in value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(bad(417, "only `Expect: 100-continue` is supported"));
            }
            expect_continue = true;
        } else if h.name.eq_ignore_ascii_case("authorization") && authorization.is_none() {
            authorization = Some(value.to_vec());
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Head {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        content_length: content_length.unwrap_or(0),
        close,
        expect_continue,
        authorization,
    })
}

/// The body: `len` bytes, from what is buffered and then the stream.
pub(super) fn read_body<T: Transport>(
    t: &mut T,
    buf: &mut Vec<u8>,
    len: usize,
) -> io::Result<Vec<u8>> {
    if buf.len() >= len {
        let rest = buf.split_off(len);
        return Ok(std::mem::replace(buf, rest));
    }
    let mut body = std::mem::take(buf);
    while body.len() < len {
        if fill(t, &mut body, len)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    // A read never asks for more than the body still needs, so nothing past it is in `body`.
    Ok(body)
}

/// At most 80 characters of `s`, control characters escaped, for error messages.
fn printable(s: &str) -> String {
    s.chars().take(80).flat_map(char::escape_debug).collect()
}
