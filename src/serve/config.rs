//! The `serve` config file: TOML whose keys are `serve`'s long flags (`mqtt_username = "x"` is
//! `--mqtt-username x`), turned into those flags' arguments. The command line puts them before
//! its own and parses the whole with its one definition of the flags (so the command line wins),
//! and gives the keys, from that definition: a key without a flag cannot exist.
//!
//! Relative paths in the file are relative to the file's folder, not to the working directory
//! (systemd starts services in /).

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use anyhow::Context;
use serde::de::{self, DeserializeSeed, MapAccess, Unexpected, Visitor};

/// What the flag of a key takes, and so what the key may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A switch (`--no-http`): `true` gives the flag, `false` nothing.
    Switch,
    /// A value (`--threshold 0.7`): a string, a number or a boolean, passed as its text for the
    /// flag's own parser to read.
    Value,
    /// A path (`--head DIR`): a string, relative to the config file.
    Path,
}

/// A config key: the long flag it stands for (`mqtt-username`), and what that takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub flag: String,
    pub kind: KeyKind,
}

impl Key {
    /// The name in the file: the flag with `_` for `-`.
    pub fn name(&self) -> String {
        self.flag.replace('-', "_")
    }
}

/// One key of a config file as an argument.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigArg {
    /// The key as the file names it (`mqtt_username`).
    pub key: String,
    /// The flag it stands for (`mqtt-username`).
    pub flag: String,
    /// `--flag=value` or `--switch`; `None` for a switch set to false.
    pub arg: Option<OsString>,
}

/// Checks one key's argument as its flag would take it: `Err` with the reason it would not.
pub type Check<'a> = &'a dyn Fn(&Key, &OsString) -> Result<(), String>;

/// The arguments that the config file at `path` stands for, in the file's order; `keys` are the
/// accepted ones, and `check` reads each argument as its flag would. Any other key, or a value
/// of the wrong kind or that `check` refuses, is an error naming the file and the key (its line
/// and column).
pub fn read(path: &Path, keys: &[Key], check: Check) -> anyhow::Result<Vec<ConfigArg>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read config file", path.display()))?;
    parse(&text, path, keys, check)
}

/// As [`read`] on the file's text already in memory; `path` is named in errors and relative
/// paths are resolved against its directory.
pub fn parse(
    text: &str,
    path: &Path,
    keys: &[Key],
    check: Check,
) -> anyhow::Result<Vec<ConfigArg>> {
    let file = File {
        keys,
        base: path.parent().unwrap_or(Path::new(".")),
        check,
    };
    file.deserialize(toml::Deserializer::new(text))
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: invalid config: {}",
                path.display(),
                e.to_string().trim()
            )
        })
}

/// The whole file: a table of keys.
struct File<'a> {
    keys: &'a [Key],
    base: &'a Path,
    check: Check<'a>,
}

impl<'de> DeserializeSeed<'de> for File<'_> {
    type Value = Vec<ConfigArg>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<ConfigArg>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for File<'_> {
    type Value = Vec<ConfigArg>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table of serve's flags")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<ConfigArg>, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key_seed(KeyName(self.keys))? {
            let arg = map.next_value_seed(Value {
                key,
                base: self.base,
                check: self.check,
            })?;
            out.push(ConfigArg {
                key: key.name(),
                flag: key.flag.clone(),
                arg,
            });
        }
        Ok(out)
    }
}

/// A key of the table, found among the accepted ones (so that TOML's error points at it).
struct KeyName<'a>(&'a [Key]);

impl<'a, 'de> DeserializeSeed<'de> for KeyName<'a> {
    type Value = &'a Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<&'a Key, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'a> Visitor<'_> for KeyName<'a> {
    type Value = &'a Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, name: &str) -> Result<&'a Key, E> {
        match self.0.iter().find(|k| k.name() == name) {
            Some(key) => Ok(key),
            None => Err(E::custom(unknown_key(name, self.0))),
        }
    }
}

/// Worded as serde words an unknown field (what this error said when the keys were a struct's).
fn unknown_key(name: &str, keys: &[Key]) -> String {
    let names: Vec<String> = keys.iter().map(|k| format!("`{}`", k.name())).collect();
    match names.as_slice() {
        [] => format!("unknown field `{name}`, there are no fields"),
        [one] => format!("unknown field `{name}`, expected {one}"),
        [a, b] => format!("unknown field `{name}`, expected {a} or {b}"),
        all => format!("unknown field `{name}`, expected one of {}", all.join(", ")),
    }
}

/// A key's value, as the argument it gives.
struct Value<'a> {
    key: &'a Key,
    base: &'a Path,
    check: Check<'a>,
}

impl Value<'_> {
    fn arg<E: de::Error>(&self, value: impl fmt::Display) -> Result<Option<OsString>, E> {
        self.checked(format!("--{}={value}", self.key.flag).into())
    }

    /// `arg` if the flag takes it; else the reason, as an error TOML places at the value.
    fn checked<E: de::Error>(&self, arg: OsString) -> Result<Option<OsString>, E> {
        (self.check)(self.key, &arg).map_err(E::custom)?;
        Ok(Some(arg))
    }
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = Option<OsString>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<OsString>, D::Error> {
        d.deserialize_any(self)
    }
}

impl Visitor<'_> for Value<'_> {
    type Value = Option<OsString>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self.key.kind {
            KeyKind::Switch => "a boolean",
            KeyKind::Value => "a string, a number or a boolean",
            KeyKind::Path => "path string",
        })
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<OsString>, E> {
        match self.key.kind {
            KeyKind::Switch if v => self.checked(format!("--{}", self.key.flag).into()),
            KeyKind::Switch => Ok(None),
            KeyKind::Value => self.arg(v),
            KeyKind::Path => Err(E::invalid_type(Unexpected::Bool(v), &self)),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<OsString>, E> {
        match self.key.kind {
            KeyKind::Value => self.arg(v),
            _ => Err(E::invalid_type(Unexpected::Signed(v), &self)),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<OsString>, E> {
        match self.key.kind {
            KeyKind::Value => self.arg(v),
            _ => Err(E::invalid_type(Unexpected::Unsigned(v), &self)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<OsString>, E> {
        match self.key.kind {
            KeyKind::Value => self.arg(v),
            _ => Err(E::invalid_type(Unexpected::Float(v), &self)),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<OsString>, E> {
        match self.key.kind {
            KeyKind::Value => self.arg(v),
            KeyKind::Path => {
                let mut arg = OsString::from(format!("--{}=", self.key.flag));
                arg.push(self.base.join(v));
                self.checked(arg)
            }
            KeyKind::Switch => Err(E::invalid_type(Unexpected::Str(v), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<Key> {
        [
            ("head", KeyKind::Path),
            ("threshold", KeyKind::Value),
            ("fps", KeyKind::Value),
            ("no-http", KeyKind::Switch),
            ("mqtt-discovery", KeyKind::Value),
            ("token-file", KeyKind::Path),
        ]
        .map(|(flag, kind)| Key {
            flag: flag.into(),
            kind,
        })
        .into()
    }

    fn args(text: &str, path: &Path) -> anyhow::Result<Vec<String>> {
        let check = |_: &Key, arg: &OsString| match arg.to_str() {
            Some("--threshold=x") => Err("not a number".to_string()),
            _ => Ok(()),
        };
        Ok(parse(text, path, &keys(), &check)?
            .into_iter()
            .filter_map(|a| a.arg.map(|a| a.into_string().unwrap()))
            .collect())
    }

    #[test]
    fn keys_become_their_flags_with_paths_relative_to_the_file() {
        let dir = Path::new("/etc/edge-mnv2");
        let p = dir.join("config.toml");
        let got = args(
            "head = \"heads/bees\"\nthreshold = -0.5\nfps = 5\nno_http = true\nmqtt_discovery = false\ntoken_file = \"/abs/token\"\n",
            &p,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "--head=/etc/edge-mnv2/heads/bees",
                "--threshold=-0.5",
                "--fps=5",
                "--no-http",
                "--mqtt-discovery=false",
                "--token-file=/abs/token",
            ]
        );
        // A switch set to false is no flag at all.
        assert!(args("no_http = false\n", &p).unwrap().is_empty());
    }

    #[test]
    fn an_unknown_key_or_a_wrong_kind_of_value_names_the_file_and_the_key() {
        let p = Path::new("/etc/edge-mnv2/config.toml");
        let e = format!("{:#}", args("treshold = 0.5\n", p).unwrap_err());
        assert!(
            e.starts_with("/etc/edge-mnv2/config.toml: invalid config: ")
                && e.contains("unknown field `treshold`, expected one of `head`, `threshold`,"),
            "{e}"
        );
        let e = format!("{:#}", args("no_http = \"yes\"\n", p).unwrap_err());
        assert!(
            e.contains("config.toml") && e.contains("no_http = \"yes\"") && e.contains("boolean"),
            "{e}"
        );
        let e = format!("{:#}", args("head = 5\n", p).unwrap_err());
        assert!(e.contains("head = 5") && e.contains("path string"), "{e}");
        assert!(args("head = [\"a\"]\n", p).is_err());
        // What the check refuses is an error at the value, with the check's reason.
        let e = format!("{:#}", args("fps = 2\nthreshold = \"x\"\n", p).unwrap_err());
        assert!(
            e.contains("line 2, column 13") && e.ends_with("not a number"),
            "{e}"
        );
        assert!(args("head = \n", p).is_err());
    }
}
