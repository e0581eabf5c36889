//! One error type for the library. Every variant renders as a single line that names the
//! file, key or parameter at fault and what was expected, because that line is what a CLI user sees.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user-supplied parameter outside what the method allows.
    #[error("invalid parameter `{name}`: {message}")]
    InvalidParameter { name: String, message: String },

    /// A config value (from a diffusers JSON file) that this implementation does not support.
    #[error("unsupported config value `{key}` = {value}: {expected}")]
    UnsupportedConfig { key: String, value: String, expected: String },

    /// Config content this implementation cannot read (the caller names the file).
    #[error("{0}")]
    Config(String),

    /// A file that is missing, unreadable or malformed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    /// Tensor shapes that do not fit together.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape { what: String, expected: String, got: String },

    /// NaN or infinity where a finite value is required (usually a model output).
    #[error("non-finite values (NaN or inf) in {what} at step {step}")]
    NonFinite { what: String, step: usize },

    /// An invariant of this library broke: a bug in sada, never the user's input.
    #[error("internal error (a bug in sada, please report it): {0}")]
    Internal(String),

    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn param(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidParameter { name: name.into(), message: message.into() }
    }

    pub fn unsupported(key: impl Into<String>, value: impl std::fmt::Display, expected: impl Into<String>) -> Self {
        Error::UnsupportedConfig { key: key.into(), value: value.to_string(), expected: expected.into() }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File { path: path.into(), message: message.into() }
    }
}
