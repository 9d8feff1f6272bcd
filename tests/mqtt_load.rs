//! `serve`'s MQTT session on a board whose cores are all busy: a busy loop per core for a minute
//! while `serve` classifies and keeps an otherwise idle connection (publish mode `changes`, one
//! still image, so after the first result only keep-alive pings cross it). No spurious `offline`
//! may reach the broker: Home Assistant would show a working board as gone (issue 28).
//!
//! Its own test binary, so the load does not slow the timed waits of `tests/mqtt.rs`.
#![cfg(feature = "mqtt")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mqtt::*;
use common::*;

/// How long both cores stay busy: four of serve's 15 s keep-alive periods, well past the 22.5 s
/// after which the broker gives up on a silent client.
const LOAD: Duration = Duration::from_secs(60);

/// One spinning thread per core until `stop`; the threads' handles.
fn busy_cores(stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u64>> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut spins = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
                spins
            })
        })
        .collect()
}

/// The Unix times at which the broker received a PINGREQ from `client`.
fn pings(broker_log: &str, client: &str) -> Vec<u64> {
    let tail = format!(": Received PINGREQ from {client}");
    broker_log
        .lines()
        .filter(|l| l.ends_with(&tail))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect()
}

#[test]
fn no_spurious_offline_while_both_cores_are_busy() {
    if !mosquitto_available("no_spurious_offline_while_both_cores_are_busy") {
        return;
    }
    let broker = Broker::start();
    let sub = Subscriber::start(&broker);
    let tmp = tempfile::tempdir().unwrap();
    let head = trained_head_in(tmp.path(), "head", |_| {});
    let config = board_config(
        tmp.path(),
        "pi1",
        &broker,
        "mqtt_publish = \"changes\"\nmqtt_heartbeat_s = 3600\n",
    );
    let image = hymenoptera_train_image("ants", 0);
    let mut served = start_served(&head, &config, &image, &["--fps", "4"]);
    served.wait("connected", Duration::from_secs(120), |s| {
        s.log().contains("MQTT: connected to the broker")
    });
    sub.wait("the first result", Duration::from_secs(60), |s| {
        !s.on("edge-mnv2/pi1/state").is_empty()
    });

    let stop = Arc::new(AtomicBool::new(false));
    let spinners = busy_cores(&stop);
    let frames_before = served.lines().len();
    let loaded_from = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let end = Instant::now() + LOAD;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
        let avail = sub.on("edge-mnv2/pi1/availability");
        assert!(
            avail.iter().all(|(p, _)| p == b"online"),
            "the broker marked a working board offline under load:\n{}\n{}",
            served.log(),
            broker.log()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    let frames_during = served.lines().len() - frames_before;
    let log = broker.log();

    // The connection was idle but for pings, and they kept it: one session, no will fired.
    let pinged: Vec<u64> = pings(&log, "edge-mnv2-pi1")
        .into_iter()
        .filter(|&t| t >= loaded_from)
        .collect();
    assert!(
        pinged.len() >= 3,
        "{} keep-alive pings in {LOAD:?} (was the session idle?):\n{log}",
        pinged.len()
    );
    assert!(!log.contains("exceeded timeout"), "{log}");
    assert_eq!(
        served
            .log()
            .matches("MQTT: connected to the broker")
            .count(),
        1,
        "{}",
        served.log()
    );
    assert!(frames_during > 0, "no frame classified under load");

    // A clean stop still says goodbye: exactly online, then offline.
    assert_eq!(served.terminate().1, Some(0), "{}", served.log());
    sub.wait("offline", Duration::from_secs(10), |s| {
        s.on("edge-mnv2/pi1/availability").len() >= 2
    });
    let avail: Vec<Vec<u8>> = sub
        .on("edge-mnv2/pi1/availability")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(avail, [b"online".to_vec(), b"offline".to_vec()], "{log}");
    eprintln!(
        "under load: {frames_during} frames classified, {} pings at {:?} (Unix s)",
        pinged.len(),
        pinged
    );
}
