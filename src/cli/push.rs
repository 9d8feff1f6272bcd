//! `push-head`: signs a head install (or a rollback) for each board and sends it through the
//! boards' MQTT broker, or to each board's HTTP API (`--url`), then prints each board's answer.
//! Exit 1 unless every board accepted.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use edge_mnv2::push::{self, HeadTransport, HttpTransport, Payload};
use edge_mnv2::serve::auth::Token;
use edge_mnv2::serve::topics::{check_board, BrokerUrl};

use super::args::PushHeadArgs;
use super::errors;

pub fn push_head(args: &PushHeadArgs) -> Result<ExitCode> {
    let token = Token::load(&args.token_file)?;
    // Over HTTP a board is its URL.
    let boards = match &args.broker {
        Some(_) => args
            .boards
            .iter()
            .map(|b| check_board(b.trim()).map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()?,
        None => args
            .url
            .iter()
            .map(|u| push::check_board_url(u).map(|()| u.clone()))
            .collect::<Result<Vec<_>>>()?,
    };
    let payload = match (&args.head, &args.head_url, args.rollback) {
        (Some(dir), _, _) => Payload::from_head(dir)?,
        (None, Some(url), _) => {
            edge_mnv2::fetch::check_url(url)?;
            Payload::Url {
                url: url.clone(),
                sha256: args.sha256.clone().unwrap_or_default(),
            }
        }
        (None, None, _) => Payload::Rollback,
    };
    let password = match &args.password_file {
        Some(p) => Some(super::serve::read_secret(p)?),
        None => None,
    };
    let mut transport: Box<dyn HeadTransport> = match &args.broker {
        Some(broker) => mqtt_transport(args, broker, password.as_deref())?,
        None => Box::new(HttpTransport::new(&token)),
    };
    let commands = push::commands(&token, &boards, &payload);
    let answers = transport.push(&commands, Duration::from_secs(args.timeout));
    let mut all_ok = true;
    let mut out = errors::stdout();
    for (c, answer) in commands.iter().zip(answers) {
        match answer {
            Ok(a) if a.ok => writeln!(
                out,
                "{}: ok, head {} (was {})",
                c.board,
                a.sha256,
                a.previous.as_deref().unwrap_or("-")
            )?,
            Ok(a) => {
                all_ok = false;
                writeln!(
                    out,
                    "{}: refused: {} (running head {})",
                    c.board,
                    a.error.as_deref().unwrap_or("no reason given"),
                    a.sha256
                )?;
            }
            Err(e) => {
                all_ok = false;
                writeln!(out, "{}: {e:#}", c.board)?;
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(feature = "mqtt")]
fn mqtt_transport(
    args: &PushHeadArgs,
    broker: &str,
    password: Option<&str>,
) -> Result<Box<dyn HeadTransport>> {
    let broker = BrokerUrl::parse(broker)?;
    Ok(Box::new(edge_mnv2::push::mqtt::MqttTransport::connect(
        &broker,
        args.username.as_deref(),
        password,
        args.ca_file.as_deref(),
        &args.prefix,
    )?))
}

#[cfg(not(feature = "mqtt"))]
fn mqtt_transport(
    _args: &PushHeadArgs,
    broker: &str,
    _password: Option<&str>,
) -> Result<Box<dyn HeadTransport>> {
    BrokerUrl::parse(broker)?;
    anyhow::bail!("--broker: this edge-mnv2 was built without the `mqtt` feature")
}
