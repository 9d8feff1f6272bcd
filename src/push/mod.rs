//! `push-head`, the client of a rollout: one signed command ([`crate::serve::commands::HeadCommand`])
//! per board (each names its board, so a command cannot be replayed to another), sent over a
//! [`HeadTransport`], one answer per board back: MQTT through the boards' broker
//! ([`mqtt::MqttTransport`], feature `mqtt`), or [`HttpTransport`], a `PUT /head` (or
//! `POST /rollback`) to each board's URL under the bearer token. What the boards' side shares with
//! it (the command format, its signature, the answers, the broker options) is in [`crate::serve`];
//! nothing there knows this module.

mod http;
#[cfg(feature = "mqtt")]
pub mod mqtt;
mod send;

pub use http::{check_board_url, HttpTransport};
pub use send::{commands, BoardCommand, HeadTransport, Payload};
