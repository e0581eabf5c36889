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
    let value: serde_json::Value = serde_json::from_str(&python_json(text)).map_err(|e| Error::file(path, format!("invalid config: {e}")))?;
    from_value(value).map_err(|e| Error::file(path, format!("invalid config: {e}")))
}

/// A config struct (every field defaulted) from a JSON object; an error names the key at fault
/// where one key alone fails, since serde's own message does not.
pub fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> std::result::Result<T, String> {
    serde_json::from_value::<T>(value.clone()).map_err(|e| {
        let culprit = value.as_object().and_then(|o| {
            o.iter().find_map(|(k, v)| {
                let alone = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
                serde_json::from_value::<T>(alone).err().map(|e| (k.clone(), v.clone(), e))
            })
        });
        match culprit {
            // our own enum messages already name the key
            Some((_, _, e)) if e.to_string().contains("unsupported `") => e.to_string(),
            Some((k, v, e)) => format!("`{k}` = {v}: {e}"),
            None => e.to_string(),
        }
    })
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

/// A config key whose value is one of a fixed set of strings, read into an enum: an unknown
/// value is refused with one line naming the key and the values it takes.
macro_rules! config_enum {
    ($(#[$meta:meta])* $name:ident, $key:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The value as diffusers writes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> std::result::Result<Self, String> {
                match s.as_str() {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unsupported `{}` = {other}: expected one of {}", $key, [$($text),+].join(", "))),
                }
            }
        }

        impl From<$name> for &'static str {
            fn from(v: $name) -> &'static str {
                v.as_str()
            }
        }
    };
}
pub(crate) use config_enum;

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
