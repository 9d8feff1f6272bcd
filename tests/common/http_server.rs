//! A tiny HTTP/1.1 server on 127.0.0.1 in the test process, for `models fetch` and head URLs:
//! each connection gets the next reply of a plan (the last one repeats), and the server records
//! every connection and request path.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server answers to one request.
#[derive(Clone)]
pub enum Reply {
    /// 200 with the body and its Content-Length.
    Body(Vec<u8>),
    /// 200 announcing `body.len()` bytes, sending only the first `sent`, then closing.
    Truncated { body: Vec<u8>, sent: usize },
    /// 200 announcing `body.len()` bytes, sending the first `sent`, then nothing until the
    /// client goes away (at most a minute). [`Server::wait_stalled`] reports when they are out.
    Stall { body: Vec<u8>, sent: usize },
    /// Reads the request and answers nothing until the client goes away (at most a minute).
    Silent,
    /// This status line with a short body.
    Status(&'static str),
    /// 302 to this Location.
    Redirect(String),
    /// Close the connection without answering.
    HangUp,
    /// 200 with the ../shared/models file the path's last segment names.
    SharedFile,
}

pub struct Server {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Request paths in arrival order.
    requests: Arc<Mutex<Vec<String>>>,
    /// Accepted connections, whether or not a request came.
    connections: Arc<AtomicUsize>,
    stalled: Mutex<Receiver<()>>,
}

impl Server {
    /// `plan[i]` for the i-th request of a path not ending in `special.0`, the last one for
    /// every later request; `special.1` for the path ending in `special.0` (a label file). At
    /// most 16 connections, each answered on its own thread.
    pub fn start_plan(plan: Vec<Reply>, special: Option<(&str, Reply)>) -> Server {
        assert!(!plan.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (log, count) = (Arc::clone(&requests), Arc::clone(&connections));
        let special = special.map(|(suffix, reply)| (suffix.to_string(), reply));
        let plan = Arc::new(plan);
        let served = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for stream in listener.incoming().take(16) {
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(stream) = stream else { continue };
                let (plan, special, log, tx) = (
                    Arc::clone(&plan),
                    special.clone(),
                    Arc::clone(&log),
                    tx.clone(),
                );
                let served = Arc::clone(&served);
                std::thread::spawn(move || {
                    let _ = answer(stream, &plan, &served, special.as_ref(), &log, &tx);
                });
            }
        });
        Server {
            base,
            requests,
            connections,
            stalled: Mutex::new(rx),
        }
    }

    /// `reply` to every request.
    pub fn start(reply: Reply) -> Server {
        Server::start_plan(vec![reply], None)
    }

    /// Request paths in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Connections accepted so far (a client that connected and sent nothing counts).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Blocks until a [`Reply::Stall`] has sent its bytes (panics after `timeout`).
    pub fn wait_stalled(&self, timeout: Duration) {
        self.stalled
            .lock()
            .unwrap()
            .recv_timeout(timeout)
            .expect("the stalling reply started");
    }
}

/// A TCP port on 127.0.0.1 whose connections are never accepted: its accept queue is full, so
/// the kernel drops further SYNs and a client's connect hangs until its own timeout. Keep the
/// returned values alive for as long as the port must stall.
pub fn unanswered_port() -> (String, TcpListener, TcpStream) {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    // A backlog of 0 leaves room for one queued connection; the stream below takes it.
    // SAFETY: listen(2) on a socket this function owns.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    let addr = listener.local_addr().unwrap();
    let filler = TcpStream::connect(addr).expect("filling the accept queue");
    (format!("http://{addr}"), listener, filler)
}

fn answer(
    stream: TcpStream,
    plan: &[Reply],
    served: &AtomicUsize,
    special: Option<&(String, Reply)>,
    log: &Mutex<Vec<String>>,
    stalled: &Sender<()>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read the whole head: closing with unread request bytes would make the kernel send a reset.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let reply = match special {
        Some((suffix, reply)) if path.ends_with(suffix.as_str()) => reply,
        _ => &plan[served.fetch_add(1, Ordering::SeqCst).min(plan.len() - 1)],
    };
    log.lock().unwrap().push(path.clone());
    let mut stream = stream;
    let head = |status: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
    };
    let wait_for_close = |stream: &mut TcpStream| {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = stream.read(&mut [0u8; 1]);
    };
    match reply {
        Reply::Body(body) => {
            stream.write_all(head("200 OK", body.len()).as_bytes())?;
            stream.write_all(body)?;
        }
        Reply::Truncated { body, sent } => {
            stream.write_all(head("200 OK", body.len()).as_bytes())?;
            stream.write_all(&body[..*sent])?;
        }
        Reply::Stall { body, sent } => {
            stream.write_all(head("200 OK", body.len()).as_bytes())?;
            stream.write_all(&body[..*sent])?;
            stream.flush()?;
            let _ = stalled.send(());
            wait_for_close(&mut stream);
            return Ok(());
        }
        Reply::Silent => {
            wait_for_close(&mut stream);
            return Ok(());
        }
        Reply::Status(status) => {
            let body = b"no such file\n";
            stream.write_all(head(status, body.len()).as_bytes())?;
            stream.write_all(body)?;
        }
        Reply::Redirect(location) => {
            stream.write_all(
                format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )?;
        }
        Reply::HangUp => {}
        Reply::SharedFile => {
            let name = path.rsplit('/').next().unwrap_or("");
            let body = std::fs::read(super::models_dir().join(name)).expect("shared model file");
            stream.write_all(head("200 OK", body.len()).as_bytes())?;
            stream.write_all(&body)?;
        }
    }
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}
