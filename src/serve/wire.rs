//! HTTP/1.1 on one connection, independent of what the endpoints do: a request is read
//! (`super::request`), checked against the token rule and the body limits, admitted (429) and
//! answered (`super::reply`), over any [`Transport`] (a TCP stream, or bytes in memory for
//! fuzzing).
//!
//! Every way a request can go wrong ends in a 4xx answer or a closed connection, never in a stall
//! longer than a deadline: the head must arrive within [`HEAD_TIMEOUT`] and the body within
//! [`BODY_TIMEOUT`], however slowly the bytes trickle in. Bodies need a `Content-Length` (no
//! chunked uploads: a camera image has a known size) and are read only after the request was
//! routed, authorised and admitted, so a refused upload costs no memory.

use std::io::{self, Read, Write};
use std::time::Instant;

use super::auth::{needs_token, Token};
use super::reply::{write_reply, Reply};
use super::request::{
    read_body, read_head, Endpoint, HeadError, Request, Transport, BODY_TIMEOUT, HEAD_TIMEOUT,
    MAX_BODY,
};
use super::rollout::MAX_HEAD_BYTES;

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
    /// The last answer may have left bytes unread (a body, pipelined requests): stop writing and
    /// let the client finish sending before closing, so the kernel does not reset the connection
    /// under its answer.
    Drain,
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
        // A refused request ends the connection (`Connection: close` tells the client to send
        // again what it pipelined after it). What the client already sent, a body or pipelined
        // requests, is then drained, not left unread: closing on unread bytes resets the
        // connection, and the client may lose the answer.
        let refuse = |t: &mut T, reply: Reply| {
            let _ = write_reply(t, &reply, true);
            Ending::Drain
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
        if write_reply(t, &reply, head.close).is_err() {
            return Ending::Close;
        }
        if head.close {
            // Requests pipelined after `Connection: close` are not served, but not reset either.
            return if buf.is_empty() {
                Ending::Close
            } else {
                Ending::Drain
            };
        }
    }
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
    use super::super::request::MAX_HEAD;
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
    fn method_not_allowed_names_the_methods_of_the_path() {
        for (request, allow) in [
            ("PUT /healthz", "GET"),
            ("GET /classify", "POST"),
            ("POST /head", "PUT"),
            ("DELETE /rollback", "POST"),
        ] {
            let (out, _) = run(format!("{request} HTTP/1.1\r\n\r\n").as_bytes(), None);
            assert_eq!(statuses(&out), [405], "{out}");
            assert!(out.contains(&format!("\r\nAllow: {allow}\r\n")), "{out}");
        }
        // Only 405 names them.
        for request in ["GET /nope", "GET /healthz"] {
            let (out, _) = run(format!("{request} HTTP/1.1\r\n\r\n").as_bytes(), None);
            assert!(!out.contains("Allow:"), "{out}");
        }
    }

    #[test]
    fn requests_pipelined_after_the_last_answer_are_drained_not_reset() {
        // A refusal ends the connection and says so; what came after it is drained.
        let (out, ending) = run(
            b"GET /nope HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
            None,
        );
        assert_eq!(statuses(&out), [404], "{out}");
        assert!(out.contains("Connection: close"), "{out}");
        assert_eq!(ending, Ending::Drain);
        let (_, ending) = run(
            b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
            None,
        );
        assert_eq!(ending, Ending::Drain);
        // Nothing after the last answer: nothing to drain.
        let (_, ending) = run(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", None);
        assert_eq!(ending, Ending::Close);
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
