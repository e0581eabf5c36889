//! Reading config JSON the way diffusers and transformers write it.
//!
//! Python's `json.dump` writes non-finite floats as bare `NaN`, `Infinity` and `-Infinity`
//! (diffusers' DPMSolverMultistepScheduler saves `"lambda_min_clipped": -Infinity`), which
//! strict JSON parsers refuse. Every config file of a model goes through [`parse_config`], so
//! those literals are read the same way everywhere.

use std::path::Path;

use crate::error::{Error, Result};

/// Read and parse a config file; errors name `path`.
pub fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read config: {e}")))?;
    parse_config(&text, path)
}

/// Parse config JSON as diffusers writes it (see [`python_json`]); errors name `path`.
pub fn parse_config<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    serde_json::from_str(&python_json(text)).map_err(|e| Error::file(path, format!("invalid config: {e}")))
}

/// Python's non-finite literals outside strings become `null`, which every config field that
/// can hold them reads as its default ("no clipping").
pub fn python_json(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("Infinity") && !text.contains("NaN") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if let Some(lit) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|l| rest.starts_with(l)) {
            out.push_str("null");
            rest = &rest[lit.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::python_json;

    #[test]
    fn python_non_finite_literals_become_null_outside_strings() {
        let text = r#"{"a": -Infinity, "b": [NaN, Infinity], "c": "-Infinity \" NaN", "d": 1.5}"#;
        let v: serde_json::Value = serde_json::from_str(&python_json(text)).unwrap();
        assert!(v["a"].is_null() && v["b"][0].is_null() && v["b"][1].is_null());
        assert_eq!(v["c"], "-Infinity \" NaN");
        assert_eq!(v["d"], 1.5);
    }
}
