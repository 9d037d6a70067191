use base64::Engine as _;
use serde::Deserialize;

/// Envoy's `DataSource`: bytes inline or from a file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DataSourceConfig {
    pub filename: Option<String>,
    pub inline_string: Option<String>,
    /// Base64, as proto JSON encodes `bytes`.
    pub inline_bytes: Option<String>,
    pub environment_variable: Option<String>,
}

impl DataSourceConfig {
    /// The bytes this source names.
    pub fn load(&self) -> Result<Vec<u8>, String> {
        let set = [
            self.filename.is_some(),
            self.inline_string.is_some(),
            self.inline_bytes.is_some(),
            self.environment_variable.is_some(),
        ];
        match set.iter().filter(|s| **s).count() {
            0 => return Err("one of filename, inline_string, inline_bytes, environment_variable is required".into()),
            1 => {}
            _ => return Err("only one of filename, inline_string, inline_bytes, environment_variable may be set".into()),
        }
        if let Some(f) = &self.filename {
            return std::fs::read(f).map_err(|e| format!("cannot read `{f}`: {e}"));
        }
        if let Some(s) = &self.inline_string {
            return Ok(s.clone().into_bytes());
        }
        if let Some(b) = &self.inline_bytes {
            return base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| format!("inline_bytes is not valid base64: {e}"));
        }
        let var = self.environment_variable.as_deref().unwrap_or_default();
        std::env::var(var)
            .map(String::into_bytes)
            .map_err(|_| format!("environment variable `{var}` is not set"))
    }
}
