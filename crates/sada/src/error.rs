//! One error type for the library. Every variant renders as a single line that names the
//! file, key or parameter at fault and what was expected, because that line is what a CLI user sees.

use std::path::PathBuf;

/// Every error the library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user-supplied parameter outside what the method allows.
    #[error("invalid parameter `{name}`: {message}")]
    InvalidParameter {
        /// The parameter's name (e.g. `steps`, `acc_range`).
        name: String,
        /// What is wrong with its value.
        message: String,
    },

    /// A config value (from a diffusers JSON file) that this implementation does not support.
    #[error("unsupported config value `{key}` = {value}: {expected}")]
    UnsupportedConfig {
        /// The config key.
        key: String,
        /// The value found, as text.
        value: String,
        /// What this implementation supports instead.
        expected: String,
    },

    /// Config content this implementation cannot read (the caller names the file).
    #[error("{0}")]
    Config(String),

    /// A file that is missing, unreadable or malformed.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// Tensor shapes that do not fit together.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        /// What was being checked.
        what: String,
        /// What was required.
        expected: String,
        /// What was found.
        got: String,
    },

    /// NaN or infinity where a finite value is required (usually a model output).
    #[error("non-finite values (NaN or inf) in {what} at step {step}")]
    NonFinite {
        /// The tensor that held them.
        what: String,
        /// The solver step at which they appeared.
        step: usize,
    },

    /// An invariant of this library broke: a bug in sada, never the user's input.
    #[error("internal error (a bug in sada, please report it): {0}")]
    Internal(String),

    /// An error from candle, the tensor library.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    /// A JSON error from serde_json.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// [`Error::InvalidParameter`]: parameter `name` has a value it does not allow.
    pub fn param(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidParameter { name: name.into(), message: message.into() }
    }

    /// [`Error::UnsupportedConfig`]: config key `key` holds `value`; `expected` says what is supported.
    pub fn unsupported(key: impl Into<String>, value: impl std::fmt::Display, expected: impl Into<String>) -> Self {
        Error::UnsupportedConfig { key: key.into(), value: value.to_string(), expected: expected.into() }
    }

    /// [`Error::Internal`]: a broken invariant, a bug in sada.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// [`Error::File`]: `path` is missing, unreadable or malformed.
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File { path: path.into(), message: message.into() }
    }
}
