//! A real Mosquitto broker for the MQTT tests (`tests/mqtt.rs`, `tests/mqtt_load.rs`): started on a
//! free 127.0.0.1 port with a password file and a log of every packet, a subscriber on `#` that
//! records what a subscriber sees, and the boards' config files.
#![cfg(feature = "mqtt")]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use super::served::Served;
use super::{s, stderr};
use edge_mnv2::head::Head;

pub const USER: &str = "edge";
pub const PASSWORD: &str = "s3cret-broker-password";
pub const TOKEN: &str = "board-token-0123456789abcdef";

/// Whether `mosquitto` can run here; prints the skip (or fails under the CI variable).
pub fn mosquitto_available(test: &str) -> bool {
    tool_available(test, "mosquitto", "-h")
}

/// Whether `tool` (run with `probe`) is installed; prints the skip, or fails when CI's
/// `EDGE_MNV2_REQUIRE_MOSQUITTO=1` says it must be.
pub fn tool_available(test: &str, tool: &str, probe: &str) -> bool {
    let found = Command::new(tool)
        .arg(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("EDGE_MNV2_REQUIRE_MOSQUITTO").as_deref() != Ok("1"),
            "{test}: {tool} is not installed and EDGE_MNV2_REQUIRE_MOSQUITTO=1"
        );
        eprintln!("{test}: SKIPPED: {tool} is not installed (apt-get install {tool})");
    }
    found
}

/// A free port on 127.0.0.1 (bound, then released for the broker).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA and a server certificate it signed for `IP:127.0.0.1`, made with `openssl`.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// `None` (printing the skip) where `openssl` is missing, unless CI's variable requires it.
    pub fn make(test: &str) -> Option<TestPki> {
        if !tool_available(test, "openssl", "version") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| {
            let o = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .unwrap();
            assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
        };
        let new_p256_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=edge-mnv2 test CA",
            ][..],
            &new_p256_key,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat());
        run(&[
            &["req", "-subj", "/CN=127.0.0.1"][..],
            &new_p256_key,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat());
        std::fs::write(d.join("server.ext"), "subjectAltName = IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        // Mosquitto started as root reads its key after dropping to its own user: this
        // throwaway key and its folder must be readable by others.
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [(d.to_path_buf(), 0o755), (d.join("server.key"), 0o644)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        Some(TestPki { dir })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A Mosquitto broker on a free loopback port, with user/password authentication, and with
/// a [`TestPki`], a second, TLS listener. It logs every packet (with its Unix time) to a file that
/// [`Broker::log`] reads: a failing test shows which client connected, pinged or timed out.
pub struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    tls_port: Option<u16>,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(None)
    }

    pub fn start_with(pki: Option<&TestPki>) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let passwords = dir.path().join("passwords");
        let o = Command::new("mosquitto_passwd")
            .args(["-b", "-c", s(&passwords), USER, PASSWORD])
            .output()
            .expect("mosquitto_passwd");
        assert!(o.status.success(), "{}", stderr(&o));
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\n\
             log_dest stderr\nlog_type all\nlog_timestamp true\n",
            passwords.display()
        );
        let tls_port = pki.map(|pki| {
            let tls_port = free_port();
            conf += &format!(
                "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
                pki.file("server.pem").display(),
                pki.file("server.key").display()
            );
            tls_port
        });
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut broker = Broker {
            dir,
            port,
            tls_port,
            child: None,
        };
        broker.up();
        broker
    }

    pub fn up(&mut self) {
        // Opened here, not by Mosquitto, which drops root for its own user; appended across restarts.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new("mosquitto")
            .args(["-c", s(&self.dir.path().join("mosquitto.conf"))])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        for port in [Some(self.port), self.tls_port].into_iter().flatten() {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < end, "mosquitto did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// What the broker logged so far (every connect, packet and disconnect).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.tls_port.unwrap())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

/// (topic, payload, retained)
pub type Message = (String, Vec<u8>, bool);

/// Every message on `#` in one broker session, as a subscriber sees it. Each subscriber has a client
/// id of its own: two with one id take the session from each other, and each reconnect brings the
/// retained messages again (a second retained `offline` after one last will, issue 28).
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Message>>>,
    sessions: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    client: Client,
}

impl Subscriber {
    pub fn start(broker: &Broker) -> Subscriber {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "test-sub-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.port);
        o.set_credentials(USER, PASSWORD);
        o.set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut connection) = Client::new(o, 64);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sessions = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicBool::new(false));
        let (m, n, halt, sub, c) = (
            messages.clone(),
            sessions.clone(),
            stop.clone(),
            subscribed.clone(),
            client.clone(),
        );
        std::thread::spawn(move || {
            while !halt.load(Ordering::SeqCst) {
                match connection.recv_timeout(Duration::from_millis(100)) {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        n.fetch_add(1, Ordering::SeqCst);
                        c.try_subscribe("#", QoS::AtLeastOnce).unwrap();
                    }
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => sub.store(true, Ordering::SeqCst),
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        m.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec(), p.retain));
                    }
                    Ok(Err(_)) => std::thread::sleep(Duration::from_millis(200)),
                    Err(rumqttc::RecvTimeoutError::Disconnected) => return,
                    _ => {}
                }
            }
        });
        let end = Instant::now() + Duration::from_secs(10);
        while !subscribed.load(Ordering::SeqCst) {
            assert!(Instant::now() < end, "test subscriber did not subscribe");
            std::thread::sleep(Duration::from_millis(20));
        }
        Subscriber {
            messages,
            sessions,
            stop,
            client,
        }
    }

    /// What arrived on `topic` (payload, retained), in order. Panics if the subscriber's session
    /// was ever lost: after a reconnect the retained messages arrive again, and counting them
    /// would test the test, not the board.
    pub fn on(&self, topic: &str) -> Vec<(Vec<u8>, bool)> {
        assert_eq!(
            self.sessions.load(Ordering::SeqCst),
            1,
            "the test subscriber lost its broker session and reconnected"
        );
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, p, r)| (p.clone(), *r))
            .collect()
    }

    pub fn json_on(&self, topic: &str) -> Vec<Value> {
        self.on(topic)
            .iter()
            .map(|(p, _)| serde_json::from_slice(p).unwrap())
            .collect()
    }

    pub fn wait(&self, what: &str, timeout: Duration, f: impl Fn(&Subscriber) -> bool) {
        let end = Instant::now() + timeout;
        while !f(self) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Subscriber {
    /// Ends the session and its thread (which would otherwise reconnect for the rest of the run).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}

/// A config file for a board: broker credentials, token, and `extra` lines.
pub fn board_config(dir: &Path, board: &str, broker: &Broker, extra: &str) -> PathBuf {
    board_config_at(dir, board, &broker.url(), extra)
}

/// [`board_config`] for the broker at `url`.
pub fn board_config_at(dir: &Path, board: &str, url: &str, extra: &str) -> PathBuf {
    std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    // A token file others can read is refused (src/serve/auth.rs).
    std::fs::set_permissions(
        dir.join("token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let p = dir.join(format!("{board}.toml"));
    std::fs::write(
        &p,
        format!(
            "mqtt = \"{url}\"\nboard = \"{board}\"\nmqtt_username = \"{USER}\"\nmqtt_password_file = \"password\"\ntoken_file = \"token\"\n{extra}"
        ),
    )
    .unwrap();
    p
}

/// A copy of the suite's shared head in `dir/name/`, optionally changed, returned as its directory.
pub fn trained_head_in(dir: &Path, name: &str, change: impl FnOnce(&mut Head)) -> PathBuf {
    super::head_in(super::shared_head(), dir, name, change)
}

/// `serve --no-http --head HEAD --config CONFIG --source SOURCE <extra>`.
pub fn start_served(head: &Path, config: &Path, source: &Path, extra: &[&str]) -> Served {
    let (head, config, source) = (s(head), s(config), s(source));
    let args = [
        "--no-http",
        "--head",
        head,
        "--config",
        config,
        "--source",
        source,
    ];
    Served::start(&[&args[..], extra].concat())
}
