//! `serve --mqtt` and `push-head` against a real Mosquitto broker, started here on a free
//! 127.0.0.1 port with a password file: per-frame results, Home Assistant discovery, the last
//! will on `kill -9`, reconnecting after a broker restart without losing a JSON line, the
//! `changes` publish mode, `mqtts://` against a test CA, and head rollout to two boards
//! (refusals and rollback included).
//!
//! Without `mosquitto` (or, for TLS, `openssl`) these tests print that they skip, unless
//! `EDGE_MNV2_REQUIRE_MOSQUITTO=1` (CI) turns the skip into a failure.
#![cfg(feature = "mqtt")]

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::served::Served;
use common::*;
use edge_mnv2::head::Head;
use edge_mnv2::serve::mqtt::MqttTransport;
use edge_mnv2::serve::push::{self, HeadTransport, Payload};
use edge_mnv2::serve::rollout::Token;
use edge_mnv2::serve::topics::BrokerUrl;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

const USER: &str = "edge";
const PASSWORD: &str = "s3cret-broker-password";
const TOKEN: &str = "board-token-0123456789abcdef";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn val() -> PathBuf {
    shared().join("datasets/hymenoptera/val")
}

/// Whether `mosquitto` can run here; prints the skip (or fails under the CI variable).
fn mosquitto_available(test: &str) -> bool {
    tool_available(test, "mosquitto", "-h")
}

/// Whether `tool` (run with `probe`) is installed; prints the skip, or fails when CI's
/// `EDGE_MNV2_REQUIRE_MOSQUITTO=1` says it must be.
fn tool_available(test: &str, tool: &str, probe: &str) -> bool {
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
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA and a server certificate it signed for `IP:127.0.0.1`, made with `openssl`.
struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// `None` (printing the skip) where `openssl` is missing, unless CI's variable requires it.
    fn make(test: &str) -> Option<TestPki> {
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

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A Mosquitto broker on a free loopback port, with user/password authentication, and with
/// a [`TestPki`], a second, TLS listener.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    tls_port: Option<u16>,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_with(None)
    }

    fn start_with(pki: Option<&TestPki>) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let passwords = dir.path().join("passwords");
        let o = Command::new("mosquitto_passwd")
            .args(["-b", "-c", s(&passwords), USER, PASSWORD])
            .output()
            .expect("mosquitto_passwd");
        assert!(o.status.success(), "{}", stderr(&o));
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\n",
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

    fn up(&mut self) {
        let child = Command::new("mosquitto")
            .args(["-c", s(&self.dir.path().join("mosquitto.conf"))])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn tls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.tls_port.unwrap())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

/// (topic, payload, retained)
type Message = (String, Vec<u8>, bool);

/// Every message on `#`, re-subscribing after a reconnect.
struct Subscriber {
    messages: Arc<Mutex<Vec<Message>>>,
}

impl Subscriber {
    fn start(broker: &Broker) -> Subscriber {
        let mut o = MqttOptions::new(
            format!("test-sub-{}", std::process::id()),
            "127.0.0.1",
            broker.port,
        );
        o.set_credentials(USER, PASSWORD);
        o.set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut connection) = Client::new(o, 64);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        let subscribed = Arc::new(Mutex::new(false));
        let sub = subscribed.clone();
        std::thread::spawn(move || loop {
            match connection.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    client.try_subscribe("#", QoS::AtLeastOnce).unwrap();
                }
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => *sub.lock().unwrap() = true,
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    m.lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec(), p.retain));
                }
                Ok(Err(_)) => std::thread::sleep(Duration::from_millis(200)),
                Err(rumqttc::RecvTimeoutError::Disconnected) => return,
                _ => {}
            }
        });
        let end = Instant::now() + Duration::from_secs(10);
        while !*subscribed.lock().unwrap() {
            assert!(Instant::now() < end, "test subscriber did not subscribe");
            std::thread::sleep(Duration::from_millis(20));
        }
        Subscriber { messages }
    }

    fn on(&self, topic: &str) -> Vec<(Vec<u8>, bool)> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, p, r)| (p.clone(), *r))
            .collect()
    }

    fn json_on(&self, topic: &str) -> Vec<Value> {
        self.on(topic)
            .iter()
            .map(|(p, _)| serde_json::from_slice(p).unwrap())
            .collect()
    }

    fn wait(&self, what: &str, timeout: Duration, f: impl Fn(&Subscriber) -> bool) {
        let end = Instant::now() + timeout;
        while !f(self) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A head trained once per test binary on hymenoptera/train.
fn trained_head() -> &'static Path {
    static HEAD: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, file) = HEAD.get_or_init(|| {
        let train = |_: &Path| shared().join("datasets/hymenoptera/train");
        let (tmp, dir) = train_head(train, &["--augment", "0", "--epochs", "30"]);
        (tmp, dir.join("head.json"))
    });
    file
}

/// A copy of the trained head in `dir/name/`, optionally changed, returned as its directory.
fn head_in(dir: &Path, name: &str, change: impl FnOnce(&mut Head)) -> PathBuf {
    common::head_in(trained_head(), dir, name, change)
}

/// `serve --no-http --head HEAD --config CONFIG --source SOURCE <extra>`.
fn start_served(head: &Path, config: &Path, source: &Path, extra: &[&str]) -> Served {
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

/// What most tests start from: a broker (with a TLS listener given a PKI), a subscriber on
/// `#`, and a folder holding a copy of the trained head (returned as its directory).
fn bench(pki: Option<&TestPki>) -> (Broker, Subscriber, tempfile::TempDir, PathBuf) {
    let broker = Broker::start_with(pki);
    let sub = Subscriber::start(&broker);
    let tmp = tempfile::tempdir().unwrap();
    let head = head_in(tmp.path(), "head", |_| {});
    (broker, sub, tmp, head)
}

/// `serve` on `n` frames of `source` to the end (exit 0), with `extra` arguments: its JSON lines.
fn replay(head: &Path, config: &Path, source: &Path, n: usize, extra: &[&str]) -> Vec<Value> {
    let n_text = n.to_string();
    let extra = [&["--frames", &n_text][..], extra].concat();
    let mut served = start_served(head, config, source, &extra);
    assert_eq!(
        served.exit(Duration::from_secs(180)),
        Some(0),
        "{}",
        served.log()
    );
    let lines = served.lines();
    assert_eq!(lines.len(), n, "{}", served.log());
    lines
}

/// A config file for a board: broker credentials, token, and `extra` lines.
fn board_config(dir: &Path, board: &str, broker: &Broker, extra: &str) -> PathBuf {
    board_config_at(dir, board, &broker.url(), extra)
}

/// [`board_config`] for the broker at `url`.
fn board_config_at(dir: &Path, board: &str, url: &str, extra: &str) -> PathBuf {
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

#[test]
fn results_discovery_availability_and_last_will() {
    if !mosquitto_available("results_discovery_availability_and_last_will") {
        return;
    }
    let (broker, sub, tmp, head) = bench(None);
    let config = board_config(tmp.path(), "pi1", &broker, "");
    let ants = val().join("ants");

    // A bounded replay: every frame on stdout is also on the state topic, in order.
    let lines = replay(&head, &config, &ants, 12, &[]);
    sub.wait("12 results", Duration::from_secs(10), |s| {
        s.on("edge-mnv2/pi1/state").len() >= 12
    });
    let published = sub.json_on("edge-mnv2/pi1/state");
    assert_eq!(published, lines, "the state topic carries the JSON lines");
    assert!(published
        .iter()
        .all(|r| r["label"] == "ants" || r["label"] == "bees"));

    // Availability went online, then offline on a clean stop.
    let avail = sub.on("edge-mnv2/pi1/availability");
    let texts: Vec<&[u8]> = avail.iter().map(|(p, _)| p.as_slice()).collect();
    assert_eq!(texts, [b"online".as_slice(), b"offline".as_slice()]);

    // What a Home Assistant that connects later sees (retained): three sensors on the state
    // topic grouped under one device, and the board offline.
    let late = Subscriber::start(&broker);
    late.wait("the retained messages", Duration::from_secs(10), |s| {
        !s.on("edge-mnv2/pi1/availability").is_empty()
    });
    assert_eq!(
        late.on("edge-mnv2/pi1/availability"),
        [(b"offline".to_vec(), true)]
    );
    for (object, template) in [
        ("label", "{{ value_json.label }}"),
        (
            "confidence",
            "{{ (value_json.confidence * 100) | round(1) }}",
        ),
        ("latency", "{{ value_json.latency_ms }}"),
    ] {
        let topic = format!("homeassistant/sensor/edge_mnv2_pi1/{object}/config");
        let got = late.on(&topic);
        assert_eq!(got.len(), 1, "{topic}");
        assert!(got[0].1, "{topic} is retained");
        let c: Value = serde_json::from_slice(&got[0].0).unwrap();
        assert_eq!(c["state_topic"], "edge-mnv2/pi1/state");
        assert_eq!(c["availability_topic"], "edge-mnv2/pi1/availability");
        assert_eq!(c["value_template"], template);
        assert_eq!(c["unique_id"], format!("edge_mnv2_pi1_{object}"));
        assert_eq!(c["device"]["identifiers"][0], "edge_mnv2_pi1");
    }

    // Last will: a board killed with SIGKILL is marked offline by the broker.
    let mut served = start_served(&head, &config, &ants, &["--board", "pi2", "--fps", "2"]);
    sub.wait("pi2 online", Duration::from_secs(120), |s| {
        s.on("edge-mnv2/pi2/availability").len() == 1
    });
    served.wait("a frame", Duration::from_secs(60), |s| {
        !s.lines().is_empty()
    });
    let before = sub.on("edge-mnv2/pi2/availability").len();
    served.child.kill().unwrap();
    let _ = served.child.wait();
    sub.wait("pi2's last will", Duration::from_secs(30), |s| {
        s.on("edge-mnv2/pi2/availability").len() > before
    });
    let avail = sub.on("edge-mnv2/pi2/availability");
    let will: Vec<&[u8]> = avail[before..].iter().map(|(p, _)| p.as_slice()).collect();
    assert_eq!(will, [b"offline".as_slice()], "{}", served.log());
}

#[test]
fn reconnects_after_a_broker_restart_without_losing_a_json_line() {
    if !mosquitto_available("reconnects_after_a_broker_restart_without_losing_a_json_line") {
        return;
    }
    let mut broker = Broker::start();
    let tmp = tempfile::tempdir().unwrap();
    let head = head_in(tmp.path(), "head", |_| {});
    let config = board_config(tmp.path(), "pi1", &broker, "");
    // Replayed without --fps: every frame is classified and printed, none dropped, so any gap in
    // the sequence numbers would be a frame lost to the broker's outage.
    let mut served = start_served(&head, &config, &val().join("bees"), &[]);
    served.wait("connected", Duration::from_secs(120), |s| {
        s.log().contains("MQTT: connected")
    });
    served.wait("frames", Duration::from_secs(60), |s| s.lines().len() >= 3);
    broker.down();
    served.wait("the lost connection", Duration::from_secs(30), |s| {
        s.log().contains("MQTT: connection lost")
    });
    let during = served.lines().len();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        served.lines().len() >= during + 5,
        "inference goes on while the broker is down"
    );
    broker.up();
    let sub = Subscriber::start(&broker);
    sub.wait("results after the restart", Duration::from_secs(60), |s| {
        s.on("edge-mnv2/pi1/state").len() >= 3
    });
    // Reconnecting re-announced the board (availability and discovery are retained again).
    assert!(sub
        .on("edge-mnv2/pi1/availability")
        .iter()
        .any(|(p, _)| p == b"online"));
    assert_eq!(served.terminate().1, Some(0), "{}", served.log());
    // No frame lost on stdout: consecutive sequence numbers, no drops counted.
    let lines = served.lines();
    let frames: Vec<u64> = lines.iter().map(|l| l["frame"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (frames[0]..frames[0] + frames.len() as u64).collect();
    assert_eq!(frames, expected, "stdout skipped frames");
    assert!(
        lines.iter().all(|l| l["dropped"] == 0),
        "frames were dropped"
    );
}

/// hymenoptera/val/`class`'s images, sorted by name.
fn val_images(class: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(val().join(class))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn changes_mode_publishes_label_changes_and_heartbeats() {
    if !mosquitto_available("changes_mode_publishes_label_changes_and_heartbeats") {
        return;
    }
    let (broker, sub, tmp, head) = bench(None);
    let heartbeat = 0.6;
    let config = board_config(
        tmp.path(),
        "pi1",
        &broker,
        &format!("mqtt_publish = \"changes\"\nmqtt_heartbeat_s = {heartbeat}\n"),
    );
    // Four ants, four bees, four other ants, in this order (a folder is read sorted), at 4
    // frames/s: each run of one label lasts about a second, longer than the heartbeat.
    let frames = tmp.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    let (ants, bees) = (val_images("ants"), val_images("bees"));
    for (i, image) in [&ants[..4], &bees[..4], &ants[4..8]]
        .concat()
        .iter()
        .enumerate()
    {
        std::fs::copy(image, frames.join(format!("{i:02}.jpg"))).unwrap();
    }
    let lines = replay(&head, &config, &frames, 12, &["--fps", "4"]);

    // The rule, replayed on stdout's results: a result goes out when its label differs from
    // the last one published, or when the heartbeat has passed since then. At 4 frames/s the
    // gaps are multiples of 0.25 s, far from the 0.6 s threshold.
    let mut expected: Vec<&Value> = Vec::new();
    let (mut changes, mut heartbeats) = (0, 0);
    for line in &lines {
        match expected.last() {
            Some(last) if last["label"] != line["label"] => changes += 1,
            Some(last)
                if line["ts"].as_f64().unwrap() - last["ts"].as_f64().unwrap() >= heartbeat =>
            {
                heartbeats += 1
            }
            Some(_) => continue,
            None => {}
        }
        expected.push(line);
    }
    assert!(
        changes >= 1 && heartbeats >= 1 && expected.len() < lines.len(),
        "the frames exercise both rules and skip some: {changes} changes, {heartbeats} heartbeats, {} of {} published",
        expected.len(),
        lines.len()
    );
    sub.wait("the published results", Duration::from_secs(10), |s| {
        s.on("edge-mnv2/pi1/state").len() >= expected.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let published = sub.json_on("edge-mnv2/pi1/state");
    assert_eq!(
        published.iter().collect::<Vec<_>>(),
        expected,
        "label changes and heartbeats only"
    );
}

#[test]
fn mqtts_verifies_the_broker_against_the_configured_ca() {
    if !mosquitto_available("mqtts_verifies_the_broker_against_the_configured_ca") {
        return;
    }
    let Some(pki) = TestPki::make("mqtts_verifies_the_broker_against_the_configured_ca") else {
        return;
    };
    let (broker, sub, tmp, head) = bench(Some(&pki));
    let ants = val().join("ants");

    // With the test CA configured, results go over TLS (and reach a plain-listener subscriber).
    let ca_line = format!("mqtt_ca_file = \"{}\"\n", pki.file("ca.pem").display());
    let config = board_config_at(tmp.path(), "tls", &broker.tls_url(), &ca_line);
    let lines = replay(&head, &config, &ants, 6, &[]);
    sub.wait("6 results over TLS", Duration::from_secs(10), |s| {
        s.on("edge-mnv2/tls/state").len() >= 6
    });
    assert_eq!(sub.json_on("edge-mnv2/tls/state"), lines);

    // Without it, the compiled-in roots do not know the broker's certificate: the connection is
    // refused, nothing is published, and the frames still come out on stdout.
    let config = board_config_at(tmp.path(), "untrusted", &broker.tls_url(), "");
    let mut served = start_served(&head, &config, &ants, &["--fps", "4"]);
    served.wait_for_log("the refused connection", Duration::from_secs(120), |log| {
        log.contains("MQTT: cannot connect")
    });
    served.wait("frames", Duration::from_secs(60), |s| s.lines().len() >= 4);
    assert_eq!(served.terminate().1, Some(0), "{}", served.log());
    let log = served.log();
    assert!(log.contains("UnknownIssuer"), "{log}");
    assert!(!log.contains("MQTT: connected"), "{log}");
    assert!(sub.on("edge-mnv2/untrusted/state").is_empty());
    assert!(sub.on("edge-mnv2/untrusted/availability").is_empty());
}

fn sha256_of(dir: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        std::fs::read(dir.join("head.json")).unwrap(),
    ))
}

fn push_head(broker: &Broker, dir: &Path, what: &[&str], boards: &str) -> (Option<i32>, String) {
    let o = edge_command()
        .arg("push-head")
        .args(what)
        .args(["--token-file", s(&dir.join("token"))])
        .args(["--broker", &broker.url(), "--boards", boards])
        .args([
            "--username",
            USER,
            "--password-file",
            s(&dir.join("password")),
        ])
        .args(["--timeout", "60"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (o.status.code(), format!("{}{}", stdout(&o), stderr(&o)))
}

#[test]
fn heads_roll_out_to_two_boards_refusals_keep_the_head_and_rollback_works() {
    if !mosquitto_available("heads_roll_out_to_two_boards") {
        return;
    }
    let broker = Broker::start();
    let sub = Subscriber::start(&broker);
    let tmp = tempfile::tempdir().unwrap();
    let bees = val().join("bees");
    let mut boards = Vec::new();
    for board in ["a", "b"] {
        let dir = tmp.path().join(board);
        std::fs::create_dir_all(&dir).unwrap();
        let head = head_in(&dir, "head", |_| {});
        let config = board_config(&dir, board, &broker, "");
        let served = start_served(&head, &config, &bees, &["--fps", "4"]);
        boards.push((served, head));
    }
    let first_sha = sha256_of(&boards[0].1);
    for (board, (served, _)) in ["a", "b"].iter().zip(boards.iter_mut()) {
        served.wait("connected", Duration::from_secs(120), |s| {
            s.log().contains("MQTT: connected")
        });
        sub.wait("subscribed", Duration::from_secs(30), |s| {
            !s.on(&format!("edge-mnv2/{board}/head")).is_empty()
        });
    }

    // A new head (other class names) to both boards at once.
    let new = head_in(tmp.path(), "new", |h| {
        h.classes = vec!["fourmis".into(), "abeilles".into()]
    });
    let new_sha = sha256_of(&new);
    let (code, out) = push_head(&broker, &tmp.path().join("a"), &["--head", s(&new)], "a,b");
    assert_eq!(code, Some(0), "{out}");
    for board in ["a", "b"] {
        assert!(
            out.contains(&format!("{board}: ok, head {new_sha} (was {first_sha})")),
            "{out}"
        );
    }
    for (served, head) in &mut boards {
        served.wait("lines from the new head", Duration::from_secs(60), |s| {
            s.lines()
                .last()
                .is_some_and(|l| l["head"] == new_sha.as_str() && l["label"] == "abeilles")
        });
        assert_eq!(sha256_of(head), new_sha, "written over the head file");
        assert_eq!(
            std::fs::read(head.join("head.json.previous")).unwrap(),
            std::fs::read(trained_head()).unwrap(),
            "the replaced head is kept"
        );
    }

    // Refused: a wrong checksum, a head for another backbone, a bad signature. Nothing changes.
    let token = Token::load(&tmp.path().join("a/token")).unwrap();
    let mut transport = MqttTransport::connect(
        &BrokerUrl::parse(&broker.url()).unwrap(),
        Some(USER),
        Some(PASSWORD),
        None,
        "edge-mnv2",
    )
    .unwrap();
    let text = std::fs::read_to_string(trained_head()).unwrap();
    let wrong_sum = Payload::Inline {
        text,
        sha256: "0".repeat(64),
    };
    let answers = transport.push(
        &push::commands(&token, &["a".into()], &wrong_sum),
        Duration::from_secs(60),
    );
    let a = answers[0].as_ref().unwrap();
    assert!(
        !a.ok && a.error.as_deref().unwrap().contains("checksum mismatch"),
        "{a:?}"
    );
    assert_eq!(a.sha256, new_sha);

    let other = head_in(tmp.path(), "other", |h| h.backbone.sha256 = "0".repeat(64));
    let (code, out) = push_head(&broker, &tmp.path().join("a"), &["--head", s(&other)], "a");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("a: refused") && out.contains("backbone"),
        "{out}"
    );
    assert!(out.contains(&format!("running head {new_sha}")), "{out}");

    std::fs::write(tmp.path().join("wrong-token"), "not-the-board-token-at-all").unwrap();
    std::fs::set_permissions(
        tmp.path().join("wrong-token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let o = edge_command()
        .arg("push-head")
        .args(["--head", s(&other)])
        .args(["--token-file", s(&tmp.path().join("wrong-token"))])
        .args(["--broker", &broker.url(), "--boards", "b"])
        .args([
            "--username",
            USER,
            "--password-file",
            s(&tmp.path().join("a/password")),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("b: refused: command refused: bad HMAC"),
        "{}",
        stdout(&o)
    );
    for (_, head) in &boards {
        assert_eq!(sha256_of(head), new_sha, "a refused head is never written");
    }

    // Rollback (through MQTT) puts the first head back on both boards.
    let (code, out) = push_head(&broker, &tmp.path().join("a"), &["--rollback"], "a,b");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("a: ok, head {first_sha} (was {new_sha})")),
        "{out}"
    );
    for (served, head) in &mut boards {
        served.wait(
            "lines from the first head again",
            Duration::from_secs(60),
            |s| {
                s.lines()
                    .last()
                    .is_some_and(|l| l["head"] == first_sha.as_str() && l["label"] == "bees")
            },
        );
        assert_eq!(sha256_of(head), first_sha);
    }
    // The retained head state reports the last rollout.
    let states = sub.json_on("edge-mnv2/b/head");
    let last = states.last().unwrap();
    assert_eq!(last["sha256"], first_sha.as_str());
    assert_eq!(last["rollout"]["action"], "rollback");
    assert_eq!(last["rollout"]["ok"], true);
    for (served, _) in &mut boards {
        assert_eq!(served.terminate().1, Some(0), "{}", served.log());
    }
}
