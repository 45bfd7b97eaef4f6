//! Engine settings as every front door receives them: one loosely typed value (Python keyword
//! arguments, a JavaScript object with its names in snake_case, the C params struct with its
//! sentinels turned into nulls) read into an [`EngineConfig`] by its serde derive, with the
//! errors worded here once. The same rules as a request's options ([`crate::options`]):
//! * a `null` (Python `None`, JavaScript `null`/`undefined`) keeps the setting's default;
//! * an unknown name is an error naming it and listing the settings;
//! * a value of the wrong type is an invalid setting naming it, worded by serde
//!   (`invalid type: string "many", expected usize`);
//! * ranges are checked here too ([`EngineConfig::validate`]), so that a registry refuses a
//!   bad setting when the model is registered rather than when it is first loaded.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::EngineConfig;
use crate::error::Result;
use crate::options::{deserialize_fields, fields_of, reject_unknown_fields, OptionValue};

/// The `param` of an error about a setting no engine has, or about the settings value itself.
pub const UNKNOWN_SETTING_PARAM: &str = "settings";

impl EngineConfig {
    /// The config of the model at `model` with `settings` (a map of setting names to values,
    /// or null for all defaults), checked as [`Engine::new`](super::Engine::new) checks it
    /// (except the KV cache against the model's shape, which needs the model).
    pub fn from_settings(model: impl Into<PathBuf>, settings: OptionValue) -> Result<Self> {
        let entries = settings_entries(settings)?;
        let known = Self::setting_names();
        reject_unknown_fields(&entries, &known, ("setting", "settings"), UNKNOWN_SETTING_PARAM)?;
        let given: Vec<_> = entries.into_iter().filter(|(_, value)| *value != OptionValue::Null).collect();
        let mut config: EngineConfig = deserialize_fields(given, &known, UNKNOWN_SETTING_PARAM)?;
        config.model = model.into();
        config.validate()?;
        Ok(config)
    }

    /// Every setting's name, in the order of [`EngineConfig`]'s fields.
    pub fn setting_names() -> Vec<&'static str> {
        fields_of::<EngineConfig>().to_vec()
    }
}

/// The entries of a settings map; null is no settings.
fn settings_entries(settings: OptionValue) -> Result<Vec<(String, OptionValue)>> {
    match settings {
        OptionValue::Null => Ok(Vec::new()),
        OptionValue::Map(entries) => Ok(entries),
        other => Err(crate::Error::invalid(
            UNKNOWN_SETTING_PARAM,
            format!("expected a map of engine settings, got {}", other.kind()),
        )),
    }
}

/// `target_step_ms`: 0 asks for none (a fixed budget), as every door spells it.
pub(super) fn zero_is_none<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Option<f64>, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.filter(|&ms| ms != 0.0))
}

#[cfg(test)]
mod tests;
