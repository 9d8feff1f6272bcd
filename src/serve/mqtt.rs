//! The MQTT side of `serve` (feature `mqtt`), on rumqttc's blocking client:
//!
//! - the inference thread only hands results to a bounded queue ([`Publisher::offer`]; the
//!   oldest is dropped and counted when it is full), so a slow or absent broker never slows
//!   classification nor costs a JSON line or an HTTP answer;
//! - `mqtt-publish` moves queued results to the client while the broker is connected;
//! - `mqtt-events` drives the connection: on every (re)connect it publishes `online`, the Home
//!   Assistant discovery configs and the head state (all retained) and subscribes to `head/set`;
//!   after a failure it waits (exponential backoff) and reconnects;
//! - `mqtt-commands` runs rollout commands ([`super::commands`]) and answers on `head/result`; the
//!   retained `head` topic follows the running head whatever changed it (also HTTP and reloads).
//!
//! The other end, what `push-head` sends commands with, is `crate::push::mqtt`; it connects
//! with the same [`broker_options`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{
    Client, Connection, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS,
    RecvTimeoutError, TlsConfiguration, Transport,
};
use serde::Serialize;

use super::backoff::Backoff;
use super::commands::{self, CommandGate, HeadAnswer, HeadCommand};
use super::prometheus::MqttStats;
use super::rollout::{RolloutError, RolloutStatus};
use super::service::{FrameResult, Service};
use super::slot::lock;
use super::topics::{self, BrokerUrl, MqttSettings, PublishMode, Topics, OFFLINE, ONLINE};

/// Results waiting for the broker; beyond this the oldest are dropped.
const QUEUE: usize = 64;
const POLL: Duration = Duration::from_millis(100);
/// Rollout commands carry a head file inline: allow well above a large head.
const MAX_PACKET: usize = 40 << 20;

/// The broker options shared by `serve` and `push-head`: address, TLS, credentials.
pub fn broker_options(
    client_id: String,
    broker: &BrokerUrl,
    username: Option<&str>,
    password: Option<&str>,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<MqttOptions> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    // The broker fires the will after 1.5 keep-alives of silence: 22.5 s tells Home Assistant
    // a board lost power within half a minute. Pings come from the events thread, not the
    // inference loop, and stayed on time with both cores busy (tests/mqtt_load.rs), so a busy
    // board is not marked offline; a longer keep-alive would only delay a real outage.
    o.set_keep_alive(Duration::from_secs(15));
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let (Some(u), Some(p)) = (username, password) {
        o.set_credentials(u, p);
    }
    if broker.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(ca_file)?),
        )));
    }
    Ok(o)
}

/// rustls with the `ring` provider (the one ureq uses): the configured CA file's certificates,
/// else the compiled-in Mozilla roots.
fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("{}: not a PEM CA file: {e}", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("{}: no certificate in this PEM file", path.display());
            }
            for c in certs {
                roots
                    .add(c)
                    .with_context(|| format!("{}: unusable CA certificate", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS set-up")?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The inference thread's end: a bounded, drop-oldest queue of serialized results.
pub struct Publisher {
    queue: Mutex<Queue>,
    ready: Condvar,
    mode: PublishMode,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    last_label: Option<String>,
    /// The `ts` of the last result offered.
    last_offered: Option<f64>,
    published: u64,
    dropped: u64,
    connected: bool,
}

impl Publisher {
    fn new(mode: PublishMode) -> Publisher {
        Publisher {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            mode,
        }
    }

    /// Queues `result` for the state topic (unless the mode skips it); never blocks.
    pub fn offer(&self, result: &FrameResult) {
        let mut q = lock(&self.queue);
        let last = q.last_label.as_deref().zip(q.last_offered);
        if !self.mode.publishes(last, &result.label, result.ts) {
            return;
        }
        q.last_label = Some(result.label.clone());
        q.last_offered = Some(result.ts);
        let Ok(bytes) = serde_json::to_vec(result) else {
            return;
        };
        if q.items.len() >= QUEUE {
            q.items.pop_front();
            q.dropped += 1;
        }
        q.items.push_back(bytes);
        drop(q);
        self.ready.notify_one();
    }

    fn stats(&self) -> MqttStats {
        let q = lock(&self.queue);
        MqttStats {
            published: q.published,
            dropped: q.dropped,
            connected: q.connected,
        }
    }
}

/// The retained `<prefix>/<board>/head` message.
#[derive(Serialize)]
struct HeadState {
    classes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<RolloutStatus>,
    sha256: String,
}

/// Connects (in the background: a broker that is down is retried, never waited for) and starts
/// the three threads; they stop when the service stops, publishing `offline` first.
pub fn start(
    svc: Arc<Service>,
    settings: MqttSettings,
) -> anyhow::Result<(Arc<Publisher>, Vec<JoinHandle<()>>)> {
    let topics = settings.topics.clone();
    let mut o = broker_options(
        format!("edge-mnv2-{}", topics.board),
        &settings.broker,
        settings.username.as_deref(),
        settings.password.as_deref(),
        settings.ca_file.as_deref(),
    )?;
    o.set_last_will(LastWill::new(
        topics.availability(),
        OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    // Room for a full queue's flush at stop plus the announcements and the goodbye.
    let (client, connection) = Client::new(o, 2 * QUEUE);
    let publisher = Arc::new(Publisher::new(settings.publish));
    let accepts = settings.accepts_commands();
    if !accepts {
        log::info!(
            "MQTT head rollout off: it needs mqtt_username, mqtt_password_file and token_file"
        );
    }
    let (commands_tx, commands_rx) = mpsc::channel::<Vec<u8>>();
    let stopped = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .with_context(|| format!("starting the {name} thread"))
    };
    {
        let (svc, client, publisher, topics, stopped) = (
            svc.clone(),
            client.clone(),
            publisher.clone(),
            topics.clone(),
            stopped.clone(),
        );
        let discovery = settings.discovery;
        threads.push(spawn(
            "mqtt-events",
            Box::new(move || {
                let ctx = Events {
                    svc: &svc,
                    client: &client,
                    publisher: &publisher,
                    topics: &topics,
                    discovery,
                    accepts,
                };
                ctx.run(connection, &commands_tx);
                stopped.store(true, Ordering::SeqCst);
            }),
        )?);
    }
    {
        let (svc, client, publisher, topics) = (
            svc.clone(),
            client.clone(),
            publisher.clone(),
            topics.clone(),
        );
        threads.push(spawn(
            "mqtt-publish",
            Box::new(move || publish_loop(&svc, &client, &publisher, &topics.state())),
        )?);
    }
    if let (true, Some(token)) = (accepts, settings.token.clone()) {
        let mut gate = CommandGate::new(topics.board.clone(), token);
        threads.push(spawn(
            "mqtt-commands",
            Box::new(move || {
                while !svc.stopping() {
                    let Ok(payload) = commands_rx.recv_timeout(POLL) else {
                        continue;
                    };
                    let answer = match gate.open(&payload) {
                        Ok(cmd) => commands::execute(&svc, &cmd),
                        Err(e) => refused(&svc, &topics.board, &payload, e),
                    };
                    let body = serde_json::to_vec(&answer).expect("answers serialize");
                    if let Err(e) =
                        client.publish(topics.head_result(), QoS::AtLeastOnce, false, body)
                    {
                        log::warn!("MQTT: cannot answer a head command: {e}");
                    }
                }
            }),
        )?);
    }
    Ok((publisher, threads))
}

/// The answer to a command the gate refused, echoing its (unverified) id for the sender.
fn refused(svc: &Service, board: &str, payload: &[u8], e: RolloutError) -> HeadAnswer {
    let id = payload
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|i| serde_json::from_slice::<HeadCommand>(&payload[i + 1..]).ok())
        .map(|c| c.id)
        .unwrap_or_default();
    log::warn!("MQTT head command refused: {e}");
    commands::answer(svc, board, &id, Err(e))
}

/// The running head and how many rollouts were tried: when either moves, the head topic is stale.
type HeadKey = (String, u64);

fn head_key(svc: &Service) -> HeadKey {
    (svc.head().sha256.clone(), svc.rollouts_tried())
}

fn publish_head_state(svc: &Service, client: &Client, topics: &Topics) {
    let head = svc.head();
    let state = HeadState {
        classes: head.head.classes.clone(),
        rollout: svc.health().rollout,
        sha256: head.sha256.clone(),
    };
    let body = serde_json::to_vec(&state).expect("head state serializes");
    if let Err(e) = client.try_publish(topics.head(), QoS::AtLeastOnce, true, body) {
        log::warn!("MQTT: cannot publish the head state: {e}");
    }
}

fn publish_loop(svc: &Service, client: &Client, publisher: &Publisher, topic: &str) {
    while !svc.stopping() {
        let mut q = lock(&publisher.queue);
        if !q.connected || q.items.is_empty() {
            let _ = publisher
                .ready
                .wait_timeout(q, POLL)
                .unwrap_or_else(|p| p.into_inner());
            continue;
        }
        let item = q.items.pop_front().expect("not empty");
        drop(q);
        match client.try_publish(topic, QoS::AtMostOnce, false, item) {
            Ok(()) => lock(&publisher.queue).published += 1,
            Err(e) => {
                // The client's own channel is full (the connection is stalling): the result goes
                // back to the front, and the queue drops oldest first as new ones arrive.
                if let rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p)) = e {
                    let mut q = lock(&publisher.queue);
                    if q.items.len() < QUEUE {
                        q.items.push_front(p.payload.to_vec());
                    } else {
                        q.dropped += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        svc.set_mqtt_stats(publisher.stats());
    }
}

struct Events<'a> {
    svc: &'a Service,
    client: &'a Client,
    publisher: &'a Publisher,
    topics: &'a Topics,
    discovery: bool,
    accepts: bool,
}

impl Events<'_> {
    fn set_connected(&self, up: bool) {
        lock(&self.publisher.queue).connected = up;
        self.svc.set_mqtt_stats(self.publisher.stats());
    }

    fn on_connect(&self) {
        // try_: this thread is the one that drains the client's channel; it must never block on it.
        let publish = |topic: String, body: Vec<u8>| {
            if let Err(e) = self.client.try_publish(topic, QoS::AtLeastOnce, true, body) {
                log::warn!("MQTT: {e}");
            }
        };
        publish(self.topics.availability(), ONLINE.into());
        if self.discovery {
            for (topic, config) in topics::discovery(self.topics) {
                publish(
                    topic,
                    serde_json::to_vec(&config).expect("configs serialize"),
                );
            }
        }
        publish_head_state(self.svc, self.client, self.topics);
        if self.accepts {
            if let Err(e) = self
                .client
                .try_subscribe(self.topics.head_set(), QoS::AtLeastOnce)
            {
                log::warn!("MQTT: cannot subscribe to head commands: {e}");
            }
        }
    }

    fn run(&self, mut connection: Connection, commands: &mpsc::Sender<Vec<u8>>) {
        let mut backoff = Backoff::new();
        let mut was_up = false;
        // What the retained head topic last said; a change by any path (an MQTT command, HTTP
        // PUT /head or /rollback, a reload) is published within one poll.
        let mut announced: Option<HeadKey> = None;
        while !self.svc.stopping() {
            if was_up {
                let now = head_key(self.svc);
                if announced.as_ref() != Some(&now) {
                    publish_head_state(self.svc, self.client, self.topics);
                    announced = Some(now);
                }
            }
            match connection.recv_timeout(POLL) {
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    log::info!("MQTT: connected to the broker");
                    was_up = true;
                    backoff.reset();
                    self.set_connected(true);
                    self.on_connect();
                    announced = Some(head_key(self.svc));
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if p.topic == self.topics.head_set() {
                        let _ = commands.send(p.payload.to_vec());
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.set_connected(false);
                    let e = describe(&e);
                    let wait = backoff.next_wait();
                    if was_up {
                        log::warn!("MQTT: connection lost ({e}); reconnecting");
                    } else {
                        log::warn!("MQTT: cannot connect ({e}); retrying in {wait:?}");
                    }
                    was_up = false;
                    let end = Instant::now() + wait;
                    while !self.svc.stopping() && Instant::now() < end {
                        std::thread::sleep(POLL);
                    }
                }
            }
        }
        // A clean goodbye: `offline` (the will is only for deaths) and a disconnect, sent by
        // polling the connection a little longer.
        if lock(&self.publisher.queue).connected {
            // Results still queued (a bounded run's last frames) go out before `offline`.
            let pending: Vec<Vec<u8>> = lock(&self.publisher.queue).items.drain(..).collect();
            for item in pending {
                let _ = self
                    .client
                    .try_publish(self.topics.state(), QoS::AtMostOnce, false, item);
            }
            let _ = self.client.try_publish(
                self.topics.availability(),
                QoS::AtLeastOnce,
                true,
                OFFLINE,
            );
            let _ = self.client.try_disconnect();
            let end = Instant::now() + Duration::from_secs(2);
            while Instant::now() < end {
                match connection.recv_timeout(POLL) {
                    Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                    _ => {}
                }
            }
        }
    }
}

/// A connection error as the logs and `push-head` word it.
pub fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!("refused by the broker: {code:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn result(frame: u64, label: &str) -> FrameResult {
        FrameResult {
            confidence: 0.9,
            dropped: 0,
            frame,
            head: "7efa".into(),
            label: label.into(),
            latency_ms: 1.0,
            novelty: None,
            probs: BTreeMap::new(),
            source: format!("{frame}.jpg"),
            // One result a second.
            ts: 1796644476.5 + frame as f64,
        }
    }

    /// The frame numbers of the queued results, oldest first.
    fn queued(p: &Publisher) -> Vec<u64> {
        lock(&p.queue)
            .items
            .iter()
            .map(|bytes| {
                serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["frame"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let p = Publisher::new(PublishMode::Every);
        for frame in 1..=QUEUE as u64 {
            p.offer(&result(frame, "bees"));
        }
        assert_eq!(p.stats().dropped, 0);
        assert_eq!(queued(&p), (1..=QUEUE as u64).collect::<Vec<_>>());
        for frame in QUEUE as u64 + 1..=QUEUE as u64 + 5 {
            p.offer(&result(frame, "bees"));
        }
        // Still QUEUE results, the five oldest gone and counted; the newest is last.
        assert_eq!(p.stats().dropped, 5);
        assert_eq!(queued(&p), (6..=QUEUE as u64 + 5).collect::<Vec<_>>());
        // What is queued is the JSON line's bytes.
        let first = lock(&p.queue).items[0].clone();
        assert_eq!(first, serde_json::to_vec(&result(6, "bees")).unwrap());
    }

    #[test]
    fn changes_mode_skips_the_same_label_until_the_heartbeat() {
        let heartbeat = Duration::from_secs(60);
        let p = Publisher::new(PublishMode::Changes { heartbeat });
        p.offer(&result(1, "bees"));
        // The same label within the heartbeat: skipped.
        p.offer(&result(2, "bees"));
        p.offer(&result(3, "bees"));
        assert_eq!(queued(&p), [1]);
        // A change passes, and so does the change back.
        p.offer(&result(4, "ants"));
        p.offer(&result(5, "ants"));
        p.offer(&result(6, "bees"));
        assert_eq!(queued(&p), [1, 4, 6]);
        // Once the heartbeat has passed since the last one published, by the results' own
        // times, the same label passes too.
        let mut late = result(7, "bees");
        late.ts = result(6, "bees").ts + heartbeat.as_secs_f64();
        p.offer(&late);
        let mut soon = result(8, "bees");
        soon.ts = late.ts + 59.0;
        p.offer(&soon);
        assert_eq!(queued(&p), [1, 4, 6, 7]);
        assert_eq!(p.stats().dropped, 0);
        // `every` skips nothing.
        let every = Publisher::new(PublishMode::Every);
        for frame in 1..=3 {
            every.offer(&result(frame, "bees"));
        }
        assert_eq!(queued(&every), [1, 2, 3]);
    }
}
