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

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::mqtt::*;
use common::*;
use edge_mnv2::push::mqtt::MqttTransport;
use edge_mnv2::push::{self, HeadTransport, Payload};
use edge_mnv2::serve::auth::Token;
use edge_mnv2::serve::topics::BrokerUrl;
use serde_json::Value;

fn val() -> PathBuf {
    shared().join("datasets/hymenoptera/val")
}

/// What most tests start from: a broker (with a TLS listener given a PKI), a subscriber on
/// `#`, and a folder holding a copy of the trained head (returned as its directory).
fn bench(pki: Option<&TestPki>) -> (Broker, Subscriber, tempfile::TempDir, PathBuf) {
    let broker = Broker::start_with(pki);
    let sub = Subscriber::start(&broker);
    let tmp = tempfile::tempdir().unwrap();
    let head = trained_head_in(tmp.path(), "head", |_| {});
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
    sub.wait("12 results", Duration::from_secs(60), |s| {
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
    late.wait("the retained messages", Duration::from_secs(60), |s| {
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
    let head = trained_head_in(tmp.path(), "head", |_| {});
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
    // Frames keep coming while the broker is down (how fast depends on the machine's load).
    let during = served.lines().len();
    served.wait(
        "inference while the broker is down",
        Duration::from_secs(60),
        |s| s.lines().len() >= during + 5,
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

#[test]
fn changes_mode_publishes_label_changes_and_heartbeats() {
    if !mosquitto_available("changes_mode_publishes_label_changes_and_heartbeats") {
        return;
    }
    let (broker, sub, tmp, head) = bench(None);
    // Runs of 12 frames of one label at 4 frames/s: a frame is skipped when it comes sooner
    // than the heartbeat after the last published one, and a run outlasts the heartbeat, for
    // any frame interval between 1.4/11 s and 1.4 s. Both rules are exercised on an idle
    // machine (0.25 s) and on a loaded one (a frame took over 0.6 s on two cores running nine
    // processes, where a 0.6 s heartbeat published every frame).
    let heartbeat = 1.4;
    let config = board_config(
        tmp.path(),
        "pi1",
        &broker,
        &format!("mqtt_publish = \"changes\"\nmqtt_heartbeat_s = {heartbeat}\n"),
    );
    // Ants, bees, other ants, in this order (a folder is read sorted), each image three times.
    let frames = tmp.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    let (ants, bees) = (
        hymenoptera_images("val", "ants"),
        hymenoptera_images("val", "bees"),
    );
    let runs = [&ants[..4], &bees[..4], &ants[4..8]];
    let sequence = runs.iter().flat_map(|run| run.iter().cycle().take(12));
    for (i, image) in sequence.enumerate() {
        std::fs::copy(image, frames.join(format!("{i:02}.jpg"))).unwrap();
    }
    let lines = replay(&head, &config, &frames, 36, &["--fps", "4"]);

    // The rule, replayed on stdout's results: a result goes out when its label differs from
    // the last one published, or when the heartbeat has passed since then.
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
    sub.wait("the published results", Duration::from_secs(60), |s| {
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
    sub.wait("6 results over TLS", Duration::from_secs(60), |s| {
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
        let head = trained_head_in(&dir, "head", |_| {});
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
    let new = trained_head_in(tmp.path(), "new", |h| {
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
            std::fs::read(shared_head()).unwrap(),
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
    let text = std::fs::read_to_string(shared_head()).unwrap();
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

    let other = trained_head_in(tmp.path(), "other", |h| h.backbone.sha256 = "0".repeat(64));
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
