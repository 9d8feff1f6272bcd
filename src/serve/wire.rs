//! HTTP/1.1 on one connection, independent of what the endpoints do: request heads parsed by
//! `httparse` within a size and a deadline, the token rule, the body limits, admission (429) and
//! the answers, over any [`Transport`] (a TCP stream, or bytes in memory for fuzzing).
//!
//! Every way a request can go wrong ends in a 4xx answer or a closed connection, never in a stall
//! longer than a deadline: the head must arrive within [`HEAD_TIMEOUT`] and the body within
//! [`BODY_TIMEOUT`], however slowly the bytes trickle in. Bodies need a `Content-Length` (no
//! chunked uploads: a camera image has a known size) and are read only after the request was
//! routed, authorised and admitted, so a refused upload costs no memory.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::auth::{needs_token, Token};
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

impl Endpoint {
    /// The endpoint for `method` on `path` (the query string already cut), or the 404/405 answer.
    pub fn route(method: &str, path: &str) -> Result<Endpoint, Reply> {
        let (endpoint, allowed) = match path {
            "/latest" => (Endpoint::Latest, "GET"),
            "/healthz" => (Endpoint::Healthz, "GET"),
            "/metrics" => (Endpoint::Metrics, "GET"),
            "/classify" => (Endpoint::Classify, "POST"),
            "/reload" => (Endpoint::Reload, "POST"),
            "/head" => (Endpoint::Head, "PUT"),
            "/rollback" => (Endpoint::Rollback, "POST"),
            _ => {
                return Err(Reply::error(
                    404,
                    format!("no such endpoint: {}", printable(path)),
                ))
            }
        };
        if method == allowed {
            Ok(endpoint)
        } else {
            Err(Reply::error(
                405,
                format!("{} is not allowed on {path}", printable(method)),
            ))
        }
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

/// Bodies larger than this are refused (413) without being read: no camera image is this big.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// An answer: status, body and the few headers the service sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u32>,
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
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Reply {
        self.retry_after = Some(seconds);
        self
    }
}

/// What the endpoints do, for [`serve_connection`].
pub trait Api {
    /// Held while an admitted request is read and answered (a place in the classify queue).
    type Ticket;
    /// Admits a routed, authorised request before its body is read, or answers it (429).
    fn admit(&self, endpoint: Endpoint) -> Result<Self::Ticket, Reply>;
    fn call(&self, request: Request, ticket: Self::Ticket) -> Reply;
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Nothing unread is known to be left: close.
    Close,
    /// The last answer left a request body unread: stop writing and let the client finish
    /// sending before closing, so the kernel does not reset the connection under its answer.
    Drain,
}

/// What stops a request head from being read.
enum HeadError {
    /// The connection closed, or stayed idle, before a request began: close quietly.
    Idle,
    Answer(Reply),
}

/// A parsed request head (owned, so the buffer can be read on).
struct Head {
    method: String,
    path: String,
    query: String,
    content_length: usize,
    close: bool,
    expect_continue: bool,
    authorization: Option<Vec<u8>>,
}

/// Serves requests on one connection until it closes, a deadline passes or an answer requires
/// closing. `token`: required (for methods [`needs_token`] names) when `Some`.
pub fn serve_connection<T: Transport, A: Api>(t: &mut T, api: &A, token: Option<&Token>) -> Ending {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        t.set_read_deadline(Instant::now() + HEAD_TIMEOUT);
        let head = match read_head(t, &mut buf) {
            Ok(head) => head,
            Err(HeadError::Idle) => return Ending::Close,
            Err(HeadError::Answer(reply)) => {
                // The stream is out of step (or timed out): answer and close.
                let _ = write_reply(t, &reply, true);
                return Ending::Drain;
            }
        };
        let unread = head.content_length.saturating_sub(buf.len());
        let refuse = |t: &mut T, reply: Reply| {
            let _ = write_reply(t, &reply, true);
            if unread > 0 {
                Ending::Drain
            } else {
                Ending::Close
            }
        };
        if needs_token(&head.method)
            && token.is_some_and(|tk| !head.authorization.as_deref().is_some_and(|a| tk.accepts(a)))
        {
            return refuse(
                t,
                Reply::error(
                    401,
                    "this endpoint needs the API token: send `Authorization: Bearer TOKEN`",
                ),
            );
        }
        let endpoint = match Endpoint::route(&head.method, &head.path) {
            Ok(e) => e,
            Err(reply) => return refuse(t, reply),
        };
        if head.content_length > endpoint.max_body() {
            return refuse(
                t,
                Reply::error(
                    413,
                    match endpoint {
                        Endpoint::Classify => format!("image larger than {MAX_BODY} bytes"),
                        Endpoint::Head => format!("head file larger than {MAX_HEAD_BYTES} bytes"),
                        _ => format!("{} takes no body", head.path),
                    },
                ),
            );
        }
        let ticket = match api.admit(endpoint) {
            Ok(ticket) => ticket,
            Err(reply) => return refuse(t, reply),
        };
        if head.expect_continue
            && head.content_length > buf.len()
            && t.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|()| t.flush())
                .is_err()
        {
            return Ending::Close;
        }
        t.set_read_deadline(Instant::now() + BODY_TIMEOUT);
        let body = match read_body(t, &mut buf, head.content_length) {
            Ok(body) => body,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                let _ = write_reply(
                    t,
                    &Reply::error(
                        408,
                        format!("the body did not arrive within {BODY_TIMEOUT:?}"),
                    ),
                    true,
                );
                return Ending::Drain;
            }
            Err(_) => return Ending::Close,
        };
        let request = Request {
            endpoint,
            query: head.query,
            body,
        };
        let reply = api.call(request, ticket);
        if write_reply(t, &reply, head.close).is_err() || head.close {
            return Ending::Close;
        }
    }
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

fn read_head<T: Transport>(t: &mut T, buf: &mut Vec<u8>) -> Result<Head, HeadError> {
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
fn read_body<T: Transport>(t: &mut T, buf: &mut Vec<u8>, len: usize) -> io::Result<Vec<u8>> {
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

/// At most 80 characters of `s`, control characters escaped, for error messages.
fn printable(s: &str) -> String {
    s.chars().take(80).flat_map(char::escape_debug).collect()
}

/// An in-memory connection: reads `input`, at most `max_read` bytes at a time (as a network
/// delivers a request in pieces), and collects what is written.
pub struct MemoryTransport<'a> {
    pub input: &'a [u8],
    pub max_read: usize,
    pub output: Vec<u8>,
}

impl Read for MemoryTransport<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.max_read.max(1));
        self.input.read(&mut buf[..n])
    }
}

impl Write for MemoryTransport<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for MemoryTransport<'_> {
    fn set_read_deadline(&mut self, _deadline: Instant) {}
}

/// Answers every endpoint without a model: for tests and the fuzz target.
pub struct EchoApi;

impl Api for EchoApi {
    type Ticket = ();
    fn admit(&self, _: Endpoint) -> Result<(), Reply> {
        Ok(())
    }
    fn call(&self, request: Request, (): ()) -> Reply {
        Reply::json(
            200,
            &serde_json::json!({
                "endpoint": format!("{:?}", request.endpoint),
                "body": request.body.len(),
                "query": request.query,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-token";

    fn run(input: &[u8], token: Option<&str>) -> (String, Ending) {
        run_in_pieces(input, token, usize::MAX)
    }

    fn run_in_pieces(input: &[u8], token: Option<&str>, max_read: usize) -> (String, Ending) {
        let mut t = MemoryTransport {
            input,
            max_read,
            output: Vec::new(),
        };
        let token = token.map(Token::from_secret);
        let ending = serve_connection(&mut t, &EchoApi, token.as_ref());
        (String::from_utf8_lossy(&t.output).into_owned(), ending)
    }

    fn statuses(out: &str) -> Vec<u16> {
        out.split("HTTP/1.1 ")
            .skip(1)
            .map(|s| s[..3].parse().unwrap())
            .collect()
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_with_their_bodies() {
        let (out, _) = run(
            b"GET /healthz HTTP/1.1\r\n\r\nPOST /classify?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /nope HTTP/1.1\r\n\r\n",
            None,
        );
        assert_eq!(statuses(&out), [200, 200, 404], "{out}");
        assert!(
            out.contains(r#"{"body":3,"endpoint":"Classify","query":"x=1"}"#),
            "{out}"
        );
    }

    #[test]
    fn the_token_guards_every_method_but_get() {
        let auth = format!("Authorization: Bearer {SECRET}\r\n");
        let (out, _) = run(b"POST /reload HTTP/1.1\r\n\r\n", Some(SECRET));
        assert_eq!(statuses(&out), [401]);
        assert!(out.contains("WWW-Authenticate: Bearer"));
        // Unknown paths too: a prober learns nothing without the token.
        let (out, _) = run(b"DELETE /anything HTTP/1.1\r\n\r\n", Some(SECRET));
        assert_eq!(statuses(&out), [401]);
        let req = format!("POST /reload HTTP/1.1\r\n{auth}\r\nGET /metrics HTTP/1.1\r\n\r\n");
        let (out, _) = run(req.as_bytes(), Some(SECRET));
        assert_eq!(statuses(&out), [200, 200], "{out}");
        let (out, _) = run(b"POST /reload HTTP/1.1\r\n\r\n", None);
        assert_eq!(statuses(&out), [200]);
    }

    #[test]
    fn malformed_and_oversized_requests_get_4xx_and_close() {
        for (input, status) in [
            (&b"GARBAGE\r\n\r\n"[..], 400),
            (b"GET /healthz HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (
                b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                b"POST /classify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (
                b"POST /classify HTTP/1.1\r\nContent-Length: 16777217\r\n\r\n",
                413,
            ),
            (
                b"POST /reload HTTP/1.1\r\nContent-Length: 5000\r\n\r\n",
                413,
            ),
            (b"GET /healthz HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
            (b"PUT /healthz HTTP/1.1\r\n\r\n", 405),
        ] {
            let (out, _) = run(input, None);
            assert_eq!(
                statuses(&out),
                [status],
                "{}: {out}",
                String::from_utf8_lossy(input)
            );
            assert!(out.contains("Connection: close"), "{out}");
        }
        let huge = format!(
            "GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(statuses(&run(huge.as_bytes(), None).0), [431]);
        // A body cut short by the peer: no answer, no panic.
        let (out, _) = run(
            b"POST /classify HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
            None,
        );
        assert_eq!(out, "");
    }

    #[test]
    fn head_uploads_take_a_head_sized_body_and_the_token() {
        let auth = format!("Authorization: Bearer {SECRET}\r\n");
        let req = format!("PUT /head?sha256=ab12 HTTP/1.1\r\n{auth}Content-Length: 3\r\n\r\nabc");
        let (out, _) = run(req.as_bytes(), Some(SECRET));
        assert!(
            out.contains(r#"{"body":3,"endpoint":"Head","query":"sha256=ab12"}"#),
            "{out}"
        );
        // Several MB (a head with novelty prototypes) is admitted, beyond the limit is not.
        let big = format!("PUT /head HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 6 << 20);
        let (out, _) = run(big.as_bytes(), None);
        assert_eq!(out, "", "admitted, then cut short by the peer: {out}");
        let huge = format!(
            "PUT /head HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_HEAD_BYTES + 1
        );
        assert_eq!(statuses(&run(huge.as_bytes(), None).0), [413]);
        for req in [
            "PUT /head HTTP/1.1\r\n\r\n",
            "POST /rollback HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                statuses(&run(req.as_bytes(), Some(SECRET)).0),
                [401],
                "{req}"
            );
        }
        assert_eq!(
            statuses(&run(b"POST /head HTTP/1.1\r\n\r\n", None).0),
            [405]
        );
        let (out, _) = run(b"POST /rollback HTTP/1.1\r\n\r\n", None);
        assert!(out.contains(r#""endpoint":"Rollback""#), "{out}");
    }

    #[test]
    fn expect_continue_is_answered_before_the_body() {
        let request =
            b"POST /classify HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab";
        // The head arrives alone (a client waiting for 100 Continue): the go-ahead comes first.
        let (out, _) = run_in_pieces(request, None, request.len() - 2);
        assert!(
            out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"),
            "{out}"
        );
        // The body came with the head: no go-ahead needed.
        let (out, _) = run(request, None);
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        // Pipelined requests read one byte at a time are answered all the same.
        let (out, _) = run_in_pieces(
            b"GET /healthz HTTP/1.1\r\n\r\nPOST /classify HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            None,
            1,
        );
        assert_eq!(statuses(&out), [200, 200], "{out}");
    }

    #[test]
    fn http_1_0_and_connection_close_end_the_connection() {
        let (out, _) = run(
            b"GET /healthz HTTP/1.0\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
            None,
        );
        assert_eq!(statuses(&out), [200]);
        let (out, _) = run(
            b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
            None,
        );
        assert_eq!(statuses(&out), [200]);
    }
}
