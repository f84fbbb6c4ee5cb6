//! Reading a configuration: TOML text, `--set key=value` overrides applied to its tree, the
//! defaults merged under what was given, deserialisation that names an unknown or ill-typed key,
//! then validation. An error in a value that an override set is blamed on that `--set` item,
//! not on the file.

use super::TrainConfig;
use anyhow::{Context, Result};
use std::path::Path;

/// Deep-merges `over` into `base`: tables key by key, anything else replaced.
fn merge_toml(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_toml(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The value of serde's "unknown variant `X`, expected …" message.
fn bad_variant(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown variant `")?;
    rest.split_once('`').map(|(value, _)| value)
}

/// The dotted key of the first string equal to `needle` in `value`.
fn key_holding(value: &toml::Value, needle: &str, prefix: &str) -> Option<String> {
    match value {
        toml::Value::String(s) if s == needle => Some(prefix.to_string()),
        toml::Value::Table(t) => t.iter().find_map(|(k, child)| {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            key_holding(child, needle, &path)
        }),
        _ => None,
    }
}

/// Where a config error comes from: the file, or a `--set` override (then the file is not
/// blamed).
enum ConfigError {
    File(anyhow::Error),
    /// The `--set` item that set the bad value, and the error.
    Override(String, anyhow::Error),
}

impl ConfigError {
    fn into_inner(self) -> anyhow::Error {
        match self {
            ConfigError::File(e) | ConfigError::Override(_, e) => e,
        }
    }
}

/// `key: message`, or the message alone when the key is unknown.
fn keyed(key: &str, message: &str) -> String {
    if key.is_empty() || key == "." {
        message.to_string()
    } else {
        format!("{key}: {message}")
    }
}

/// An error about `key`: blamed on the last `--set` item that set it (or a table above it), else
/// on the file.
fn blame(key: &str, overrides: &[String], error: anyhow::Error) -> ConfigError {
    let set_by = overrides.iter().rev().find(|item| {
        let k = item
            .split_once('=')
            .map_or(item.as_str(), |(k, _)| k)
            .trim();
        !key.is_empty() && (key == k || key.starts_with(&format!("{k}.")))
    });
    match set_by {
        Some(item) => ConfigError::Override(item.clone(), error),
        None => ConfigError::File(error),
    }
}

impl TrainConfig {
    /// Reads a TOML file, applies `key=value` overrides, and validates. An error in a value that
    /// an override set names the `--set` item, not the file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_toml_in(&text, &path.display().to_string(), overrides)
    }

    /// [`TrainConfig::load`] for config text named `source` in errors (a built-in config).
    pub fn from_toml_in(text: &str, source: &str, overrides: &[String]) -> Result<Self> {
        Self::parse(text, overrides).map_err(|e| match e {
            ConfigError::Override(item, e) => e.context(format!("--set {item}")),
            ConfigError::File(e) => e.context(format!("in config {source}")),
        })
    }

    /// Parses TOML text plus overrides; unknown keys are errors naming the key.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        Self::parse(text, overrides).map_err(ConfigError::into_inner)
    }

    fn parse(text: &str, overrides: &[String]) -> std::result::Result<Self, ConfigError> {
        let mut value: toml::Value = toml::from_str(text)
            .context("not valid TOML")
            .map_err(ConfigError::File)?;
        for item in overrides {
            apply_override(&mut value, item).map_err(|e| ConfigError::Override(item.clone(), e))?;
        }
        // Keys left out take their defaults, also inside a partly given table
        // (`--set augmentation.gamma.p=0.3` keeps gamma's default range).
        let mut merged = toml::Value::try_from(TrainConfig::default()).expect("defaults serialise");
        merge_toml(&mut merged, value);
        let value = merged;
        let config: TrainConfig = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().message().trim().to_string();
            // serde names the bad value, not its key: the path tracker names the key; for an
            // unknown variant of an enum the key holding the value is looked up as before.
            let key = match (key.as_str(), bad_variant(&message)) {
                ("." | "", Some(v)) => key_holding(&value, v, "").unwrap_or_default(),
                _ => key,
            };
            blame(
                &key,
                overrides,
                anyhow::anyhow!("{}", keyed(&key, &message)),
            )
        })?;
        config.validate().map_err(|e| {
            // A range check names its key first ("optim.cnn.lr = -0.1: ...").
            let text = format!("{e:#}");
            let key = text
                .split([' ', ':'])
                .next()
                .unwrap_or_default()
                .to_string();
            blame(&key, overrides, e)
        })?;
        Ok(config)
    }
}

/// The fuzzers' entry point (`fuzz/fuzz_targets/config.rs`, `tests/config_fuzz.rs`): the text
/// up to the first NUL is a config file, each line after it a `--set` item. Whatever the bytes,
/// a configuration or an error — never a panic.
#[doc(hidden)]
pub fn fuzz_config(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let (file, sets) = text.split_once('\0').unwrap_or((&text, ""));
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    if let Ok(cfg) = TrainConfig::from_toml(file, &sets) {
        // A configuration that validates also writes and reads back.
        let _ = TrainConfig::from_toml(&cfg.to_toml(), &[]);
    }
}

/// Sets a dotted `key=value` in a TOML tree. The value is parsed as TOML (numbers, booleans,
/// arrays), falling back to a string. Creating a new key is allowed here; deserialisation then
/// rejects it by name if it is unknown.
fn apply_override(root: &mut toml::Value, item: &str) -> Result<()> {
    let (key, raw) = item
        .split_once('=')
        .with_context(|| format!("--set {item}: expected key=value"))?;
    let key = key.trim();
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .with_context(|| format!("--set {key}: '{}' is not a table", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), parsed);
            return Ok(());
        }
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    unreachable!("split always yields at least one part")
}
