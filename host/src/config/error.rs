use std::fmt;

use super::SourceMap;

/// A configuration that cannot be served, with where in the file it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML of the expected shape: unknown field, wrong type,
    /// bad value. The message carries the field path, line and column.
    #[error("{origin}: {message}")]
    Parse {
        origin: String,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// The shape is right but a value breaks a rule (unknown cluster, duplicate
    /// name, range).
    #[error("{origin}: {path}: {message}{}", Location(*line, *column))]
    Invalid {
        origin: String,
        path: String,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
}

impl ConfigError {
    pub(crate) fn parse(origin: &str, e: &serde_norway::Error) -> Self {
        let location = e.location();
        ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
        }
    }

    /// Places a validation error in the source text.
    pub fn invalid(origin: &str, source: &SourceMap, e: ValidationError) -> Self {
        let position = source.position(&e.path);
        ConfigError::Invalid {
            origin: origin.to_string(),
            line: position.map(|p| p.0),
            column: position.map(|p| p.1),
            path: e.path,
            message: e.message,
        }
    }
}

struct Location(Option<usize>, Option<usize>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(line), Some(column)) => write!(f, " at line {line} column {column}"),
            _ => Ok(()),
        }
    }
}

/// A rule broken by a parsed config: the YAML path of the culprit
/// (`static_resources.listeners[1].name`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Builds YAML paths in the format serde reports them (`a.b[2].c`).
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The error for a required string field left empty.
pub fn non_empty(value: &str, parent: &str, field: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(
            join(parent, field),
            format!("{field} must not be empty"),
        ));
    }
    Ok(())
}
