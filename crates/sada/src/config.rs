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
    let text = crate::files::read_text(path, crate::files::MAX_TEXT_FILE)?;
    parse_config(&text, path)
}

/// Parse config JSON as diffusers writes it (see [`python_json`]); errors name `path`.
pub fn parse_config<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    let value: serde_json::Value = serde_json::from_str(&python_json(text)).map_err(|e| Error::file(path, format!("invalid config: {e}")))?;
    from_value(value).map_err(|e| Error::file(path, format!("invalid config: {e}")))
}

/// A config struct from a JSON object; an error names the key at fault, since serde's own
/// message does not (see `culprit`).
pub fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> std::result::Result<T, String> {
    serde_json::from_value::<T>(value.clone()).map_err(|e| match value.as_object().and_then(|o| culprit::<T>(o, &e)) {
        // our own enum messages already name the key
        Some((_, _, message)) if message.contains("unsupported `") => message,
        Some((k, serde_json::Value::Null, message)) => format!("`{k}` = null (NaN and Infinity read as null): {message}"),
        Some((k, v, message)) => format!("`{k}` = {v}: {message}"),
        None => e.to_string(),
    })
}

/// Objects with more keys than this are not searched by removal (which reads the whole object
/// once per key): the first key that fails alone is named.
const MAX_REMOVAL_SEARCH: usize = 256;

/// The key of `object` at fault when it does not read as `T` (`whole` is serde's error), with
/// its value and the message to give. A key is at fault when the object reads without it, so a
/// key is never blamed for another's error: in a type with required fields every key alone
/// fails with the same "missing field", and a key may fail alone only for want of a partner.
/// The message is the one the key gives alone where `T` reads from `{}` (every field
/// defaulted), else `whole`. When no single key's removal helps (several keys at fault), the
/// first key that fails alone, if `T` reads from `{}`.
fn culprit<T: serde::de::DeserializeOwned>(
    object: &serde_json::Map<String, serde_json::Value>,
    whole: &serde_json::Error,
) -> Option<(String, serde_json::Value, String)> {
    let reads = |o: serde_json::Map<String, serde_json::Value>| serde_json::from_value::<T>(serde_json::Value::Object(o));
    let defaults_read = reads(serde_json::Map::new()).is_ok();
    let alone = |k: &String, v: &serde_json::Value| -> Option<String> {
        if !defaults_read {
            return None;
        }
        reads([(k.clone(), v.clone())].into_iter().collect()).err().map(|e| e.to_string())
    };
    let reads_without = |k: &String| -> bool {
        let mut rest = object.clone();
        rest.remove(k);
        reads(rest).is_ok()
    };
    let searchable = object.len() <= MAX_REMOVAL_SEARCH;
    // the usual case, one bad value in a type whose fields all have defaults: one read per key
    let first_alone = object.iter().find_map(|(k, v)| alone(k, v).map(|message| (k.clone(), v.clone(), message)));
    let confirmed = match &first_alone {
        Some((k, _, _)) => !searchable || reads_without(k),
        None => false,
    };
    if confirmed {
        return first_alone;
    }
    if searchable {
        if let Some((k, v)) = object.iter().find(|&(k, _)| reads_without(k)) {
            let message = alone(k, v).unwrap_or_else(|| whole.to_string());
            return Some((k.clone(), v.clone(), message));
        }
    }
    first_alone
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
    use super::{from_value, python_json};

    #[test]
    fn python_non_finite_literals_become_null_outside_strings() {
        let text = r#"{"a": -Infinity, "b": [NaN, Infinity], "c": "-Infinity \" NaN", "d": 1.5}"#;
        let v: serde_json::Value = serde_json::from_str(&python_json(text)).unwrap();
        assert!(v["a"].is_null() && v["b"][0].is_null() && v["b"][1].is_null());
        assert_eq!(v["c"], "-Infinity \" NaN");
        assert_eq!(v["d"], 1.5);
    }

    config_enum!(
        /// A test enum read from `feed_forward_proj`.
        Act, "feed_forward_proj" { Relu = "relu", GatedGelu = "gated-gelu" }
    );

    /// A config with a required key, as a type without defaults has.
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Required {
        #[serde(default)]
        architectures: Vec<String>,
        #[serde(default)]
        feed_forward_proj: Option<Act>,
        #[serde(default)]
        layer_norm_epsilon: f64,
        vocab_size: usize,
    }

    #[test]
    fn the_key_at_fault_is_named_even_where_keys_alone_cannot_be_read() {
        // every key alone misses `vocab_size`; the bad value is another key's
        let e =
            from_value::<Required>(serde_json::json!({"architectures": ["T5EncoderModel"], "feed_forward_proj": "swish", "vocab_size": 32128})).unwrap_err();
        assert!(e.contains("`feed_forward_proj` = swish") && e.contains("gated-gelu") && !e.contains("vocab_size"), "{e}");
        let e = from_value::<Required>(serde_json::json!({"architectures": [], "layer_norm_epsilon": "small", "vocab_size": 8})).unwrap_err();
        assert!(e.starts_with("`layer_norm_epsilon` = \"small\"") && !e.contains("vocab_size"), "{e}");
        // a required key that is absent is still reported as serde does
        let e = from_value::<Required>(serde_json::json!({"architectures": []})).unwrap_err();
        assert!(e.contains("missing field `vocab_size`"), "{e}");
        // NaN in a file reads as null: the message says so
        let e = from_value::<Required>(serde_json::from_str(&python_json(r#"{"layer_norm_epsilon": NaN, "vocab_size": 8}"#)).unwrap()).unwrap_err();
        assert!(e.starts_with("`layer_norm_epsilon` = null (NaN and Infinity read as null)"), "{e}");
    }
}
