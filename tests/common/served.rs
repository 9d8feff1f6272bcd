//! A running `edge-mnv2 serve`: its stdout JSON lines and its stderr collected by reader threads,
//! waits that fail with the log when the process exits or time runs out, signals, and a kill when
//! dropped (a failing test leaves no service behind).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Served {
    pub child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    /// Stdout lines that are not JSON: each one is a broken promise, reported by [`Self::lines`].
    not_json: Arc<Mutex<Vec<String>>>,
    log: Arc<Mutex<String>>,
}

impl Served {
    /// `edge-mnv2 serve <args>`, isolated as [`super::edge_command`] is.
    pub fn start(args: &[&str]) -> Served {
        Served::start_with(args, &[])
    }

    /// [`Self::start`] with these environment variables set.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Served {
        let mut cmd = super::edge_command();
        cmd.arg("serve").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Served::spawn(cmd)
    }

    /// Spawns `cmd` (a `serve` command line) with its output collected.
    pub fn spawn(mut cmd: Command) -> Served {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting serve");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let not_json = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (l, bad) = (Arc::clone(&lines), Arc::clone(&not_json));
        // Both pipes are drained to the end whatever they hold, so serve never blocks on a
        // full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(v) => l.lock().unwrap().push(v),
                    Err(_) => bad.lock().unwrap().push(line),
                }
            }
        });
        let g = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut g = g.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        Served {
            child,
            lines,
            not_json,
            log,
        }
    }

    /// Stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The stdout JSON lines so far; panics on any stdout line that is not JSON.
    pub fn lines(&self) -> Vec<Value> {
        let bad = self.not_json.lock().unwrap();
        assert!(bad.is_empty(), "stdout lines that are not JSON: {bad:?}");
        self.lines.lock().unwrap().clone()
    }

    /// How many stdout JSON lines so far (without copying them).
    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// The last stdout JSON line so far.
    pub fn last_line(&self) -> Option<Value> {
        self.lines.lock().unwrap().last().cloned()
    }

    /// Polls `f` until it gives a value; panics with the log if serve exits or `timeout` passes.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Served) -> Option<T>,
    ) -> T {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "serve exited ({status}) waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Self::wait_for`] a condition.
    pub fn wait(&mut self, what: &str, timeout: Duration, f: impl Fn(&Served) -> bool) {
        self.wait_for(what, timeout, |s| f(s).then_some(()))
    }

    /// [`Self::wait_for`] a condition on the log.
    pub fn wait_for_log(&mut self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) {
        self.wait_for(what, timeout, |s| f(&s.log()).then_some(()))
    }

    /// The address from the "listening on http://ADDR" log line; a wildcard address is reached
    /// through loopback (no traffic leaves this machine).
    pub fn addr(&mut self) -> String {
        let addr = self.wait_for("the listen address", Duration::from_secs(120), |s| {
            s.log()
                .lines()
                .find_map(|l| l.split("listening on http://").nth(1))
                .map(|a| a.trim().to_string())
        });
        match addr.rsplit_once(':') {
            Some(("0.0.0.0" | "[::]", port)) => format!("127.0.0.1:{port}"),
            _ => addr,
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the process to exit, at most `timeout` after `since` (else kills it and
    /// panics): (time taken since `since`, exit code). The log is complete afterwards.
    pub fn exit_within(&mut self, since: Instant, timeout: Duration) -> (Duration, Option<i32>) {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = since.elapsed();
                std::thread::sleep(Duration::from_millis(100)); // let the log reader finish
                return (took, status.code());
            }
            if since.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "serve did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// [`Self::exit_within`] 10 s of a signal sent at `since`.
    pub fn exit_after(&mut self, since: Instant) -> (Duration, Option<i32>) {
        self.exit_within(since, Duration::from_secs(10))
    }

    /// The exit code, waiting at most `timeout` from now.
    pub fn exit(&mut self, timeout: Duration) -> Option<i32> {
        self.exit_within(Instant::now(), timeout).1
    }

    /// SIGTERM, then [`Self::exit_after`].
    pub fn terminate(&mut self) -> (Duration, Option<i32>) {
        let t = Instant::now();
        self.signal(libc::SIGTERM);
        self.exit_after(t)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (status, body) of one HTTP/1.1 request.
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}
