//! `--config FILE` (ripgrep's way): the file's keys are `serve`'s flags, turned into arguments
//! ([`edge_mnv2::serve::config`]) placed before the command line's, and the whole is parsed again
//! by the one clap definition. A key is a flag, so the two lists cannot drift apart; the command
//! line wins because a flag it gives drops the file's.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{CommandFactory, Parser};

use edge_mnv2::serve::config::{self, ConfigArg, Key, KeyKind};

use super::args::{Cli, Command};

/// The flags of `serve` that are no config keys, and why.
pub const NOT_KEYS: &[&str] = &[
    // The file is the whole configuration: a file naming another one would only add a loop.
    "config", // clap's own, for the terminal.
    "help",
];

/// The keys a config file may hold: every long flag of `serve` but [`NOT_KEYS`], in the order
/// `serve --help` lists them, with what each takes.
pub fn keys(serve: &clap::Command) -> Vec<Key> {
    serve
        .get_arguments()
        .filter_map(|arg| {
            let flag = arg.get_long()?;
            if NOT_KEYS.contains(&flag) {
                return None;
            }
            let kind = if !arg.get_action().takes_values() {
                KeyKind::Switch
            } else if arg.get_value_parser().type_id() == std::any::TypeId::of::<PathBuf>() {
                KeyKind::Path
            } else {
                KeyKind::Value
            };
            Some(Key {
                flag: flag.to_string(),
                kind,
            })
        })
        .collect()
}

/// `command` as `argv` gives it, with its config file's keys (when it names one) laid under the
/// command line. `capture` reads the same file (the one `serve` reads) for the flags it has.
pub fn with_config_file(command: Command, argv: &[OsString]) -> Result<Command> {
    let (name, path) = match &command {
        Command::Serve(a) => ("serve", &a.source.config),
        Command::Capture(a) => ("capture", &a.source.config),
        _ => return Ok(command),
    };
    let Some(path) = path else {
        return Ok(command);
    };
    let entries = read(path)?;
    let cli = Cli::command();
    // Clap needs no subcommand name but the first argument: there are no global flags.
    anyhow::ensure!(
        argv.get(1).is_some_and(|a| a == name),
        "`{name}` must be the first argument"
    );
    let given = cli.clone().try_get_matches_from(argv)?;
    let given = given
        .subcommand_matches(name)
        .expect("parsed as this command");
    let command_flags = cli.find_subcommand(name).expect("a command");
    let mut merged: Vec<OsString> = argv[..2].to_vec();
    for e in entries {
        let Some(arg) = e.arg else {
            continue;
        };
        // `capture` takes only the source's keys of the file.
        let Some(flag) = command_flags
            .get_arguments()
            .find(|a| a.get_long() == Some(e.flag.as_str()))
        else {
            continue;
        };
        if given.value_source(flag.get_id().as_str()) != Some(ValueSource::CommandLine) {
            merged.push(arg);
        }
    }
    merged.extend_from_slice(&argv[2..]);
    let reparsed = Cli::try_parse_from(merged)
        .map_err(|e| anyhow::anyhow!("{}: invalid config: {}", path.display(), reason(&e)))?;
    Ok(reparsed.command)
}

/// The config file at `path` as `serve`'s arguments, each value checked by its flag's own
/// parser (alone, so that an error points at its key).
pub fn read(path: &Path) -> Result<Vec<ConfigArg>> {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve is a command");
    let check = |_: &Key, arg: &OsString| {
        serve
            .clone()
            .try_get_matches_from([OsString::from("serve"), arg.clone()])
            .map(drop)
            .map_err(|e| reason(&e))
    };
    config::read(path, &keys(serve), &check)
}

/// Clap's message without its "error: " (the error line adds ours) and its advice to try --help.
fn reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// `serve`'s flags that are no config key on purpose.
    const EXCEPTIONS: &[&str] = &[
        // A config file naming a config file.
        "config", // clap's --help.
        "help",
    ];

    fn serve() -> clap::Command {
        let mut cli = Cli::command();
        cli.build();
        cli.find_subcommand("serve").unwrap().clone()
    }

    /// The keys `deploy/config.toml` (the shipped file, which documents them) names, set or
    /// commented out, each with its first line there.
    fn documented_keys() -> BTreeMap<String, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.toml");
        let mut keys = BTreeMap::new();
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let line = line.trim_start_matches('#').trim_start();
            let Some((key, _)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                keys.entry(key.to_string())
                    .or_insert_with(|| line.to_string());
            }
        }
        keys
    }

    /// Walks serve's flags and the accepted config keys (and the keys the shipped config file
    /// documents): an entry in one list that the other lacks fails.
    #[test]
    fn every_serve_flag_is_a_config_key_and_every_key_a_flag() {
        let serve = serve();
        let flags: BTreeSet<String> = serve
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !EXCEPTIONS.contains(l))
            .map(|l| l.replace('-', "_"))
            .collect();
        let accepted: BTreeSet<String> = keys(&serve).iter().map(Key::name).collect();
        let documented: BTreeSet<String> = documented_keys().into_keys().collect();
        let mut wrong = Vec::new();
        for f in flags.difference(&accepted) {
            wrong.push(format!("--{} is no config key", f.replace('_', "-")));
        }
        for k in accepted.difference(&flags) {
            wrong.push(format!("config key `{k}` is no flag of serve"));
        }
        for k in documented.difference(&flags) {
            wrong.push(format!(
                "deploy/config.toml names `{k}`, which is no flag of serve"
            ));
        }
        for k in accepted.difference(&documented) {
            wrong.push(format!("config key `{k}` is not in deploy/config.toml"));
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(accepted.contains("mqtt_username") && accepted.contains("head"));
    }

    /// What the file sets reaches the command as its flags would (paths relative to the file);
    /// a flag given on the command line wins over the same key; `capture` takes only its own.
    #[test]
    fn file_keys_become_flags_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(
            &cfg,
            "head = \"heads/bees\"\nsource = \"/dev/video1\"\nthreshold = 0.7\nfps = 5\n\
             no_http = true\nmqtt_username = \"file\"\ntoken_file = \"token\"\n",
        )
        .unwrap();
        let run = |args: &[&str]| {
            let argv: Vec<OsString> = ["edge-mnv2"]
                .iter()
                .chain(args)
                .map(OsString::from)
                .collect();
            let cli = Cli::try_parse_from(&argv).unwrap();
            with_config_file(cli.command, &argv).unwrap()
        };
        let config = cfg.to_str().unwrap();
        let Command::Serve(a) = run(&[
            "serve",
            "--config",
            config,
            "--threshold",
            "0.9",
            "--mqtt-username",
            "flag",
        ]) else {
            panic!("not serve");
        };
        assert_eq!(a.threshold, Some(0.9));
        assert_eq!(a.mqtt_username.as_deref(), Some("flag"));
        assert_eq!(a.source.source.as_deref(), Some("/dev/video1"));
        assert_eq!(a.source.fps, Some(5.0));
        assert_eq!(a.head, Some(dir.path().join("heads/bees")));
        assert_eq!(a.token_file, Some(dir.path().join("token")));
        assert!(a.no_http);
        let Command::Capture(c) = run(&["capture", "--config", config, "--class", "bees", "data"])
        else {
            panic!("not capture");
        };
        assert_eq!(c.source.source.as_deref(), Some("/dev/video1"));
        assert_eq!(c.source.fps, Some(5.0));
    }

    /// The shipped config file, and its commented-out examples, are read as serve's flags.
    #[test]
    fn the_shipped_config_and_its_examples_are_valid() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.toml");
        assert!(read(&deploy).unwrap().len() >= 6);
        let dir = tempfile::tempdir().unwrap();
        let every = dir.path().join("config.toml");
        let lines: Vec<String> = documented_keys().into_values().collect();
        std::fs::write(&every, lines.join("\n")).unwrap();
        let args = read(&every).unwrap();
        assert_eq!(args.len(), lines.len());
    }

    /// Each key, alone in a file, reaches serve's parser as the flag of its name.
    #[test]
    fn each_key_reaches_its_flag() {
        let serve = serve();
        let keys = keys(&serve);
        let path = Path::new("/etc/edge-mnv2/config.toml");
        for key in &keys {
            // A value the flag's parser takes: switches are booleans, the rest strings or numbers.
            let parsed = ["true", "1", "\"int8\"", "\"x\""].iter().find_map(|value| {
                let text = format!("{} = {value}\n", key.name());
                let args = config::parse(&text, path, &keys, &|_, _| Ok(())).ok()?;
                let arg = args[0].arg.clone().expect("a set flag");
                serve
                    .clone()
                    .try_get_matches_from([OsString::from("serve"), arg])
                    .ok()
            });
            let m = parsed.unwrap_or_else(|| panic!("no value for `{}` parses", key.name()));
            let id = serve
                .get_arguments()
                .find(|a| a.get_long() == Some(key.flag.as_str()))
                .unwrap()
                .get_id()
                .clone();
            assert_eq!(
                m.value_source(id.as_str()),
                Some(ValueSource::CommandLine),
                "{}",
                key.name()
            );
        }
    }
}
