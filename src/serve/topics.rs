//! What `serve` publishes over MQTT, independent of the client crate (so it builds, and is
//! checked, without the `mqtt` feature): the broker URL ([`BrokerUrl`]), the settings
//! ([`MqttSettings`]), the topic names ([`Topics`]) and the Home Assistant discovery payloads
//! ([`discovery`]).
//!
//! Topics, under `<prefix>/<board>/` (prefix `edge-mnv2` unless configured):
//! - `state`: every result (or label changes and a heartbeat) as the JSON line stdout prints.
//! - `availability`: `online` / `offline`, retained; `offline` is also the last will.
//! - `head`: the running head and the last rollout, retained.
//! - `head/set`: signed rollout commands in; `head/result`: the answers out.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use super::auth::Token;

pub const DEFAULT_PREFIX: &str = "edge-mnv2";
pub const DISCOVERY_PREFIX: &str = "homeassistant";
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

#[derive(Debug, Error, PartialEq)]
pub enum MqttConfigError {
    #[error("--mqtt {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("board name '{0}': use letters, digits, '-' and '_' only (it is part of MQTT topics and Home Assistant ids)")]
    Board(String),
    #[error("mqtt_publish '{0}': must be \"every\" or \"changes\"")]
    Mode(String),
}

/// `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (8883, TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, MqttConfigError> {
        let fail = |reason: &str| MqttConfigError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(fail("must start with mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') {
            return Err(fail(
                "give only HOST:PORT (user and password go in the config file)",
            ));
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`.
        let (host, port) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => match p.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None => return Err(fail("junk after the IPv6 address")),
                },
                None => return Err(fail("an unclosed '['")),
            },
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            },
        };
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(fail("the port must be a number from 1 to 65535")),
            },
            None if tls => 8883,
            None => 1883,
        };
        if host.is_empty() {
            return Err(fail("no host"));
        }
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// Every result, or only label changes plus a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    Every,
    /// A result is published when its label differs from the last published one, or when the
    /// heartbeat interval has passed since the last publication.
    Changes {
        heartbeat: Duration,
    },
}

impl PublishMode {
    pub fn parse(mode: &str, heartbeat: Duration) -> Result<PublishMode, MqttConfigError> {
        match mode {
            "every" => Ok(PublishMode::Every),
            "changes" => Ok(PublishMode::Changes { heartbeat }),
            other => Err(MqttConfigError::Mode(other.to_string())),
        }
    }

    /// Whether a result with `label` at unix time `ts` goes out, after `last` (the label and
    /// time of the last published one). Time is the results' own `ts`, not the publisher's
    /// clock: what a subscriber receives is then a function of the results it can see, exact
    /// to the millisecond. A clock that stepped back counts as a heartbeat due.
    pub fn publishes(&self, last: Option<(&str, f64)>, label: &str, ts: f64) -> bool {
        match (self, last) {
            (PublishMode::Every, _) | (_, None) => true,
            (PublishMode::Changes { heartbeat }, Some((last_label, last_ts))) => {
                let since = ts - last_ts;
                last_label != label || !(0.0..heartbeat.as_secs_f64()).contains(&since)
            }
        }
    }
}

/// Everything the MQTT side of `serve` needs (flags and config merged).
#[derive(Clone)]
pub struct MqttSettings {
    pub broker: BrokerUrl,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA certificates for mqtts:// (default: the compiled-in Mozilla roots).
    pub ca_file: Option<PathBuf>,
    pub topics: Topics,
    pub publish: PublishMode,
    /// Publish Home Assistant discovery configs.
    pub discovery: bool,
    /// Rollout commands are taken only with a token and an authenticated broker connection.
    pub token: Option<Token>,
}

impl MqttSettings {
    /// Whether `head/set` commands are listened to: only on a connection the broker
    /// authenticated (user and password) and with a token to check their HMAC.
    pub fn accepts_commands(&self) -> bool {
        self.username.is_some() && self.password.is_some() && self.token.is_some()
    }
}

/// A board name usable in topics and Home Assistant ids.
pub fn check_board(name: &str) -> Result<String, MqttConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(name.to_string())
    } else {
        Err(MqttConfigError::Board(name.to_string()))
    }
}

/// This machine's host name made into a board name (other characters become '-').
pub fn board_from_hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "board".to_string()
    } else {
        name
    }
}

/// The topic names of one board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub prefix: String,
    pub board: String,
}

impl Topics {
    fn under(&self, leaf: &str) -> String {
        format!("{}/{}/{leaf}", self.prefix, self.board)
    }
    pub fn state(&self) -> String {
        self.under("state")
    }
    pub fn availability(&self) -> String {
        self.under("availability")
    }
    pub fn head(&self) -> String {
        self.under("head")
    }
    pub fn head_set(&self) -> String {
        self.under("head/set")
    }
    pub fn head_result(&self) -> String {
        self.under("head/result")
    }
    /// The Home Assistant node id (`edge_mnv2_<board>`).
    pub fn node_id(&self) -> String {
        format!("edge_mnv2_{}", self.board)
    }
}

/// The `device` block shared by a board's entities: Home Assistant groups them under it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub identifiers: Vec<String>,
    pub manufacturer: &'static str,
    pub model: &'static str,
    pub name: String,
    pub sw_version: &'static str,
}

/// One sensor's MQTT discovery config (Home Assistant's `sensor` platform keys).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorConfig {
    pub availability_topic: String,
    pub device: Device,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<&'static str>,
    pub icon: &'static str,
    pub name: &'static str,
    pub payload_available: &'static str,
    pub payload_not_available: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_class: Option<&'static str>,
    pub state_topic: String,
    pub unique_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_of_measurement: Option<&'static str>,
    pub value_template: &'static str,
}

/// The retained discovery messages (topic, config) that make a board three sensors in Home
/// Assistant: label, confidence (%), latency (ms).
pub fn discovery(topics: &Topics) -> Vec<(String, SensorConfig)> {
    let node = topics.node_id();
    let device = Device {
        identifiers: vec![node.clone()],
        manufacturer: "edge-mnv2",
        model: "MobileNetV2 camera classifier",
        name: format!("edge-mnv2 {}", topics.board),
        sw_version: env!("CARGO_PKG_VERSION"),
    };
    let sensor = |object: &str,
                  name: &'static str,
                  icon: &'static str,
                  value_template: &'static str,
                  unit: Option<&'static str>,
                  device_class: Option<&'static str>| {
        (
            format!("{DISCOVERY_PREFIX}/sensor/{node}/{object}/config"),
            SensorConfig {
                availability_topic: topics.availability(),
                device: device.clone(),
                device_class,
                icon,
                name,
                payload_available: ONLINE,
                payload_not_available: OFFLINE,
                state_class: unit.map(|_| "measurement"),
                state_topic: topics.state(),
                unique_id: format!("{node}_{object}"),
                unit_of_measurement: unit,
                value_template,
            },
        )
    };
    vec![
        sensor(
            "label",
            "Label",
            "mdi:label-outline",
            "{{ value_json.label }}",
            None,
            None,
        ),
        sensor(
            "confidence",
            "Confidence",
            "mdi:percent-outline",
            "{{ (value_json.confidence * 100) | round(1) }}",
            Some("%"),
            None,
        ),
        sensor(
            "latency",
            "Latency",
            "mdi:timer-outline",
            "{{ value_json.latency_ms }}",
            Some("ms"),
            Some("duration"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_mode_publishes_on_a_new_label_or_a_heartbeat_of_result_time() {
        let changes = PublishMode::Changes {
            heartbeat: Duration::from_millis(1500),
        };
        let t = 1796644476.5;
        assert!(changes.publishes(None, "ants", t));
        assert!(changes.publishes(Some(("ants", t)), "bees", t + 0.25));
        assert!(!changes.publishes(Some(("ants", t)), "ants", t + 1.499));
        // 1.505 s between the two results: due, however late the publisher runs.
        assert!(changes.publishes(Some(("ants", t)), "ants", 1796644478.005));
        assert!(changes.publishes(Some(("ants", t)), "ants", t + 1.5));
        assert!(changes.publishes(Some(("ants", t)), "ants", t - 2.0));
        assert!(PublishMode::Every.publishes(Some(("ants", t)), "ants", t));
    }

    #[test]
    fn broker_urls() {
        let b = BrokerUrl::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.tls), ("127.0.0.1", 1884, false));
        let b = BrokerUrl::parse("mqtts://broker.lan").unwrap();
        assert_eq!((b.port, b.tls), (8883, true));
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:1").unwrap().host, "::1");
        for bad in [
            "tcp://x:1",
            "mqtt://x:0",
            "mqtt://x:y",
            "mqtt://u:p@x:1",
            "mqtt://x/t",
            "mqtt://",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn board_names_are_topic_safe() {
        assert!(check_board("pi-kitchen_2").is_ok());
        for bad in ["", "a/b", "a+", "a#", "a b"] {
            assert!(check_board(bad).is_err(), "{bad}");
        }
        assert!(check_board(&board_from_hostname()).is_ok());
    }

    #[test]
    fn discovery_makes_three_sensors_on_the_state_topic() {
        let topics = Topics {
            prefix: "edge-mnv2".into(),
            board: "pi1".into(),
        };
        let configs = discovery(&topics);
        let names: Vec<&str> = configs.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "homeassistant/sensor/edge_mnv2_pi1/label/config",
                "homeassistant/sensor/edge_mnv2_pi1/confidence/config",
                "homeassistant/sensor/edge_mnv2_pi1/latency/config",
            ]
        );
        assert!(configs
            .iter()
            .all(|(_, c)| c.state_topic == "edge-mnv2/pi1/state"
                && c.availability_topic == "edge-mnv2/pi1/availability"));
    }
}
