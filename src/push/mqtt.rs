//! `push-head`'s MQTT end (feature `mqtt`): publishes each board's signed command to its
//! `head/set` topic and collects the answers from `head/result`, over a connection made with the
//! same options as the boards' own ([`broker_options`]).

use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event, Packet, QoS};

use super::send::{BoardCommand, HeadTransport};
use crate::serve::commands::HeadAnswer;
use crate::serve::mqtt::{broker_options, describe};
use crate::serve::topics::{BrokerUrl, Topics};

/// How often the answers are looked for.
const POLL: Duration = Duration::from_millis(100);

/// `push-head`'s MQTT end: publishes each board's signed command to its `head/set` topic and
/// collects the answers from `head/result`.
pub struct MqttTransport {
    client: Client,
    connection: Connection,
    prefix: String,
}

impl MqttTransport {
    pub fn connect(
        broker: &BrokerUrl,
        username: Option<&str>,
        password: Option<&str>,
        ca_file: Option<&std::path::Path>,
        prefix: &str,
    ) -> anyhow::Result<MqttTransport> {
        let id = format!("edge-mnv2-push-{}", std::process::id());
        let o = broker_options(id, broker, username, password, ca_file)?;
        let (client, mut connection) = Client::new(o, 64);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match connection.recv_timeout(Duration::from_secs(1)) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Err(e)) => anyhow::bail!(
                    "{}:{}: cannot connect to the broker: {}",
                    broker.host,
                    broker.port,
                    describe(&e)
                ),
                _ if Instant::now() > deadline => {
                    anyhow::bail!("{}:{}: no answer from the broker", broker.host, broker.port)
                }
                _ => {}
            }
        }
        Ok(MqttTransport {
            client,
            connection,
            prefix: prefix.to_string(),
        })
    }

    fn topics(&self, board: &str) -> Topics {
        Topics {
            prefix: self.prefix.clone(),
            board: board.to_string(),
        }
    }
}

impl HeadTransport for MqttTransport {
    fn push(
        &mut self,
        commands: &[BoardCommand],
        timeout: Duration,
    ) -> Vec<anyhow::Result<HeadAnswer>> {
        let mut answers: Vec<Option<anyhow::Result<HeadAnswer>>> =
            commands.iter().map(|_| None).collect();
        for c in commands {
            let topic = self.topics(&c.board).head_result();
            if let Err(e) = self.client.subscribe(topic, QoS::AtLeastOnce) {
                log::warn!("subscribing to the answers of {}: {e}", c.board);
            }
        }
        let mut subscribed = 0;
        // Publish only once every subscription is acknowledged, or a fast board's answer is lost.
        let deadline = Instant::now() + timeout;
        while subscribed < commands.len() && Instant::now() < deadline {
            if let Ok(Ok(Event::Incoming(Packet::SubAck(_)))) = self.connection.recv_timeout(POLL) {
                subscribed += 1;
            }
        }
        for c in commands {
            let topic = self.topics(&c.board).head_set();
            if let Err(e) = self
                .client
                .publish(topic, QoS::AtLeastOnce, false, c.signed.0.clone())
            {
                let i = commands
                    .iter()
                    .position(|x| x.board == c.board)
                    .unwrap_or(0);
                answers[i] = Some(Err(anyhow::anyhow!("publishing: {e}")));
            }
        }
        while answers.iter().any(Option::is_none) && Instant::now() < deadline {
            match self.connection.recv_timeout(POLL) {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let Ok(a) = serde_json::from_slice::<HeadAnswer>(&p.payload) else {
                        continue;
                    };
                    for (i, c) in commands.iter().enumerate() {
                        if answers[i].is_none() && c.board == a.board && c.id == a.id {
                            answers[i] = Some(Ok(a.clone()));
                        }
                    }
                }
                Ok(Err(e)) => {
                    let e = describe(&e);
                    for a in answers.iter_mut().filter(|a| a.is_none()) {
                        *a = Some(Err(anyhow::anyhow!("broker connection lost: {e}")));
                    }
                }
                _ => {}
            }
        }
        let _ = self.client.disconnect();
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(anyhow::anyhow!(
                        "no answer within {}s (board offline, wrong board name, or rollout off there)",
                        timeout.as_secs()
                    ))
                })
            })
            .collect()
    }
}
