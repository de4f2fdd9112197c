//! Agent configuration from the kernel command line (`husk.*` keys,
//! Kata-style: Kata's agent reads `agent.*` the same way).
//!
//! Keys with a dot are module parameters to the kernel, so it does not pass
//! them to init as arguments or environment: the agent reads /proc/cmdline.
//!
//! | key          | values                        | default |
//! |--------------|-------------------------------|---------|
//! | `husk.log`   | `debug`, `info`, `warn`, `error` | `info` |
//! | `husk.test`  | `poweroff`, `panic`           | none    |
//!
//! Parsing never fails: unknown `husk.*` keys and bad values are returned as
//! warnings for the caller to log, and the defaults are kept. A repeated key
//! takes its last valid value, as kernel parameters do.

use std::fmt;

use crate::log::Level;

/// Prefix of the keys the agent owns.
pub const KEY_PREFIX: &str = "husk.";

/// Boot-test hooks selected with `husk.test=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestAction {
    /// Power the VM off right after the ready line.
    PowerOff,
    /// Exit PID 1 so the kernel panics ("Attempted to kill init").
    Panic,
}

/// The agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub log_level: Level,
    pub test: Option<TestAction>,
}

/// Something in the command line the agent did not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWarning {
    UnknownKey(String),
    MissingValue(String),
    InvalidValue { key: String, value: String },
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::UnknownKey(key) => {
                write!(f, "Ignoring unknown kernel command line key {key:?}")
            }
            ConfigWarning::MissingValue(key) => {
                write!(
                    f,
                    "Ignoring kernel command line key {key:?} without a value"
                )
            }
            ConfigWarning::InvalidValue { key, value } => {
                write!(f, "Ignoring invalid value {value:?} for {key:?}")
            }
        }
    }
}

/// Splits a kernel command line into `(param, value)` pairs the way the
/// kernel's `next_arg()` does: whitespace separates parameters except inside
/// double quotes; quotes around a whole parameter or around its value are
/// removed. Parsing stops at a bare `--`, after which the words are init's
/// arguments, not kernel parameters.
pub fn split_cmdline(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut params = Vec::new();
    let mut rest = cmdline;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
        if rest.is_empty() {
            break;
        }
        let mut in_quote = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if c == '"' {
                in_quote = !in_quote;
            } else if !in_quote && (c.is_ascii_whitespace() || c == '\0') {
                end = i;
                break;
            }
        }
        let word = &rest[..end];
        rest = &rest[end..];
        if word == "--" {
            break;
        }
        params.push(split_param(word));
    }
    params
}

fn strip_quotes(s: &str) -> &str {
    match s.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"').unwrap_or(inner),
        None => s,
    }
}

fn split_param(word: &str) -> (String, Option<String>) {
    let word = strip_quotes(word);
    match word.split_once('=') {
        Some((key, value)) => (key.to_owned(), Some(strip_quotes(value).to_owned())),
        None => (word.to_owned(), None),
    }
}

/// Parses the agent's keys out of a kernel command line.
pub fn parse_cmdline(cmdline: &str) -> (Config, Vec<ConfigWarning>) {
    let mut config = Config::default();
    let mut warnings = Vec::new();
    for (key, value) in split_cmdline(cmdline) {
        let Some(name) = key.strip_prefix(KEY_PREFIX) else {
            continue;
        };
        let known = matches!(name, "log" | "test");
        if !known {
            warnings.push(ConfigWarning::UnknownKey(key));
            continue;
        }
        let Some(value) = value else {
            warnings.push(ConfigWarning::MissingValue(key));
            continue;
        };
        let applied = match name {
            "log" => value.parse::<Level>().map(|l| config.log_level = l).is_ok(),
            "test" => match value.as_str() {
                "poweroff" => {
                    config.test = Some(TestAction::PowerOff);
                    true
                }
                "panic" => {
                    config.test = Some(TestAction::Panic);
                    true
                }
                _ => false,
            },
            _ => unreachable!("only known keys get here"),
        };
        if !applied {
            warnings.push(ConfigWarning::InvalidValue { key, value });
        }
    }
    (config, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.to_owned(), v.map(str::to_owned))
    }

    #[test]
    fn empty_command_line_gives_defaults() {
        for cmdline in ["", "   ", "\n", "\0"] {
            let (config, warnings) = parse_cmdline(cmdline);
            assert_eq!(config, Config::default());
            assert!(warnings.is_empty());
        }
        assert_eq!(Config::default().log_level, Level::Info);
        assert_eq!(Config::default().test, None);
    }

    #[test]
    fn typical_command_line() {
        let (config, warnings) = parse_cmdline(
            "console=ttyS0 reboot=k panic=-1 quiet husk.log=debug husk.test=poweroff\n",
        );
        assert_eq!(config.log_level, Level::Debug);
        assert_eq!(config.test, Some(TestAction::PowerOff));
        assert!(warnings.is_empty());
    }

    #[test]
    fn test_panic() {
        let (config, _) = parse_cmdline("husk.test=panic");
        assert_eq!(config.test, Some(TestAction::Panic));
    }

    #[test]
    fn all_log_levels() {
        for (v, l) in [
            ("debug", Level::Debug),
            ("info", Level::Info),
            ("warn", Level::Warn),
            ("error", Level::Error),
        ] {
            assert_eq!(parse_cmdline(&format!("husk.log={v}")).0.log_level, l);
        }
    }

    #[test]
    fn splitting_follows_the_kernel() {
        assert_eq!(
            split_cmdline("a b=1  c=\"x y\" \"d=z w\" e=\"\" f= g"),
            vec![
                pair("a", None),
                pair("b", Some("1")),
                pair("c", Some("x y")),
                pair("d", Some("z w")),
                pair("e", Some("")),
                pair("f", Some("")),
                pair("g", None),
            ]
        );
    }

    #[test]
    fn value_may_contain_equals() {
        assert_eq!(
            split_cmdline("root=PARTUUID=ab-01"),
            vec![pair("root", Some("PARTUUID=ab-01"))]
        );
    }

    #[test]
    fn quoted_values_are_unquoted() {
        let (config, warnings) = parse_cmdline("husk.log=\"warn\" \"husk.test=panic\"");
        assert_eq!(config.log_level, Level::Warn);
        assert_eq!(config.test, Some(TestAction::Panic));
        assert!(warnings.is_empty());
    }

    #[test]
    fn unterminated_quote_runs_to_the_end() {
        assert_eq!(
            split_cmdline("a=\"x y husk.log=debug"),
            vec![pair("a", Some("x y husk.log=debug"))]
        );
        assert_eq!(
            parse_cmdline("a=\"x husk.log=debug").0.log_level,
            Level::Info
        );
    }

    #[test]
    fn repeated_keys_last_valid_value_wins() {
        let (config, warnings) = parse_cmdline("husk.log=debug husk.log=error");
        assert_eq!(config.log_level, Level::Error);
        assert!(warnings.is_empty());

        let (config, warnings) = parse_cmdline("husk.log=debug husk.log=loud");
        assert_eq!(config.log_level, Level::Debug);
        assert_eq!(
            warnings,
            vec![ConfigWarning::InvalidValue {
                key: "husk.log".into(),
                value: "loud".into()
            }]
        );
    }

    #[test]
    fn unknown_husk_keys_warn_others_are_ignored() {
        let (config, warnings) =
            parse_cmdline("foo=bar husk.frobnicate=1 agent.log=debug husk. husk");
        assert_eq!(config, Config::default());
        assert_eq!(
            warnings,
            vec![
                ConfigWarning::UnknownKey("husk.frobnicate".into()),
                ConfigWarning::UnknownKey("husk.".into()),
            ]
        );
    }

    #[test]
    fn missing_and_invalid_values_warn() {
        let (config, warnings) = parse_cmdline("husk.test husk.test=explode husk.log=");
        assert_eq!(config, Config::default());
        assert_eq!(
            warnings,
            vec![
                ConfigWarning::MissingValue("husk.test".into()),
                ConfigWarning::InvalidValue {
                    key: "husk.test".into(),
                    value: "explode".into()
                },
                ConfigWarning::InvalidValue {
                    key: "husk.log".into(),
                    value: "".into()
                },
            ]
        );
    }

    #[test]
    fn keys_after_double_dash_belong_to_init() {
        let (config, _) = parse_cmdline("console=ttyS0 -- husk.test=poweroff");
        assert_eq!(config.test, None);
    }

    #[test]
    fn garbage_does_not_panic() {
        for cmdline in [
            "\"",
            "\"\"",
            "=",
            "==",
            "\"=\"",
            "husk.log=\"",
            "husk.test=\"poweroff",
            "\u{1F600}=\u{1F600} husk.\u{1F600}=x",
            "a\tb\nc\rd\u{b}e",
            "husk.log=debug\0husk.test=panic",
        ] {
            let _ = parse_cmdline(cmdline);
        }
        // A NUL separates parameters like whitespace.
        assert_eq!(
            parse_cmdline("husk.log=debug\0husk.test=panic").0,
            Config {
                log_level: Level::Debug,
                test: Some(TestAction::Panic)
            }
        );
        // An unterminated quoted value is still accepted, as by the kernel.
        assert_eq!(
            parse_cmdline("husk.test=\"poweroff").0.test,
            Some(TestAction::PowerOff)
        );
    }

    #[test]
    fn warnings_are_readable() {
        assert_eq!(
            ConfigWarning::UnknownKey("husk.x".into()).to_string(),
            "Ignoring unknown kernel command line key \"husk.x\""
        );
    }
}
