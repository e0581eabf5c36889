//! Acceleration as a value: the unaccelerated baseline, SADA and its rivals, each named and
//! built from its own settings.
//!
//! Every method is a settings struct implementing [`Method`] (its policy, its presets per model
//! family, its sweep) in its own file, plus one line in the `methods!` list below. A method is
//! chosen by name with optional settings, `NAME[:key=value,...]`, e.g. `sada`,
//! `deepcache:interval=5`, `fewer-steps:steps=20`; values are JSON (`acc_range=[10,47]`).

use serde::{Deserialize, Serialize};

use super::baseline::{Baseline, FewerSteps};
use super::method::Method;
use super::plan::Policy;
use super::sada::SadaConfig;
use crate::error::{Error, Result};
use crate::family::Family;

/// Declares [`Acceleration`] from one line per method: `Variant(Settings) = "name"`.
macro_rules! methods {
    ($($variant:ident($settings:ty) = $name:literal: $about:literal),+ $(,)?) => {
        /// An acceleration method with its settings.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "method")]
        pub enum Acceleration {
            $(#[doc = concat!("`", $name, "`: ", $about, ".")] #[serde(rename = $name)] $variant($settings),)+
        }

        impl Acceleration {
    /// Check the settings against a run asked for `requested` steps: the method's own checks at
    /// the steps it runs, and that it runs no more steps than the baseline would.
    pub fn check(&self, requested: usize) -> Result<()> {
        let steps = self.steps(requested);
        if steps > requested {
            return Err(Error::param(
                format!("{}:steps", self.name()),
                format!("{steps} steps is more than the {requested} asked for; an accelerator runs at most the baseline's steps"),
            ));
        }
        self.validate(steps)
    }

            /// Every method's name and one-line description.
            pub const METHODS: &'static [(&'static str, &'static str)] = &[$(($name, $about)),+];

            /// The method's name, as `NAME[:key=value,...]` specs spell it.
            pub fn name(&self) -> &'static str {
                match self { $(Acceleration::$variant(_) => $name,)+ }
            }

            /// The method `name` with its preset for `family`.
            pub fn preset(name: &str, family: Family) -> Result<Self> {
                match name {
                    $($name => Ok(Acceleration::$variant(<$settings as Method>::preset(family))),)+
                    other => Err(unknown(other)),
                }
            }

            /// The speed-vs-fidelity sweep of method `name` (empty: it has none).
            pub fn sweep(name: &str, family: Family) -> Result<Vec<Self>> {
                match name {
                    $($name => Ok(<$settings as Method>::sweep(family).into_iter().map(Acceleration::$variant).collect()),)+
                    other => Err(unknown(other)),
                }
            }

            /// The policy that runs this method in a run seeded with `seed`.
            pub fn policy(&self, seed: u64) -> Box<dyn Policy> {
                match self { $(Acceleration::$variant(s) => s.policy(seed),)+ }
            }

            /// Check the settings against a run of `steps` solver steps.
            pub fn validate(&self, steps: usize) -> Result<()> {
                match self { $(Acceleration::$variant(s) => s.validate(steps),)+ }
            }

            /// Solver steps this method runs when `requested` are asked for.
            pub fn steps(&self, requested: usize) -> usize {
                match self { $(Acceleration::$variant(s) => s.steps(requested),)+ }
            }
        }
    };
}

methods! {
    None(Baseline) = "none": "the unaccelerated baseline: every step computed in full",
    Sada(SadaConfig) = "sada": "SADA (ICML 2025): stability-guided step skipping and token pruning",
    SadaPlus(super::sada_plus::SadaPlusConfig) = "sada+": "ours: skips x0 extrapolated in the solver's time, by an error estimate against a tolerance or a budget (tolerance, max_evals, max_error, order, max_interval, warmup, tail)",
    FewerSteps(FewerSteps) = "fewer-steps": "the plain solver with fewer steps (settings: steps)",
    DeepCache(super::deepcache::DeepCacheConfig) = "deepcache": "DeepCache: the U-Net's deep branch from the last full step (interval, branch, uniform)",
    Adaptive(super::adaptive::AdaptiveConfig) = "adaptive": "AdaptiveDiffusion: reuse the last output where the trajectory is straight (threshold, max_skip_steps)",
    FirstBlockCache(super::fbcache::FirstBlockCacheConfig) = "fbcache": "First-Block-Cache: skip the rest while the first block's residual holds (threshold)",
    TaylorSeer(super::taylorseer::TaylorSeerConfig) = "taylorseer": "TaylorSeer: forecast the network's features by Taylor series (interval, max_order, first_enhance)",
    TeaCache(super::teacache::TeaCacheConfig) = "teacache": "TeaCache: skip the blocks while the first block's modulated input has changed little, accumulated (threshold, coefficients; Flux)",
}

fn unknown(name: &str) -> Error {
    let names: Vec<&str> = Acceleration::METHODS.iter().map(|(n, _)| *n).collect();
    Error::param("accel", format!("unknown method `{name}`; expected one of {}", names.join(", ")))
}

impl Default for Acceleration {
    fn default() -> Self {
        Acceleration::None(Baseline {})
    }
}

impl Acceleration {
    /// `NAME[:key=value,...]`: the method's preset for `family` with the given settings
    /// replaced (values are JSON; a bare word is a string).
    ///
    /// ```
    /// use sada::policy::Acceleration;
    /// use sada::Family;
    ///
    /// let a = Acceleration::parse("sada:acc_range=[5,40],max_interval=3", Family::StableDiffusion)?;
    /// assert_eq!(a.label(Family::StableDiffusion), "sada:acc_range=[5,40],max_interval=3");
    /// assert_eq!(Acceleration::parse(&a.spec(), Family::StableDiffusion)?, a);
    /// assert!(Acceleration::parse("sada:max_intervall=3", Family::Sdxl).is_err());
    /// # Ok::<(), sada::Error>(())
    /// ```
    pub fn parse(spec: &str, family: Family) -> Result<Self> {
        let (name, settings) = match spec.split_once(':') {
            Some((n, s)) => (n.trim(), s),
            None => (spec.trim(), ""),
        };
        let base = Self::preset(name, family)?;
        let mut value = serde_json::to_value(&base).map_err(|e| Error::internal(format!("settings of `{name}` do not serialise: {e}")))?;
        let obj = value.as_object_mut().ok_or_else(|| Error::internal("settings serialise to a JSON object"))?;
        let mut given: Vec<&str> = Vec::new();
        for item in split_top_level(settings) {
            let (k, v) = item.split_once('=').ok_or_else(|| Error::param("accel", format!("`{item}` in `{spec}` is not key=value")))?;
            let (k, v) = (k.trim(), v.trim());
            if given.contains(&k) {
                return Err(Error::param("accel", format!("`{spec}` sets `{k}` twice; give each setting once")));
            }
            given.push(k);
            if k == "method" || !obj.contains_key(k) {
                let keys: Vec<&str> = obj.keys().map(String::as_str).filter(|k| *k != "method").collect();
                return Err(Error::param("accel", format!("`{name}` has no setting `{k}`; its settings are {}", keys.join(", "))));
            }
            let parsed = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
            obj.insert(k.to_owned(), parsed);
        }
        serde_json::from_value(value).map_err(|e| Error::param("accel", format!("`{spec}`: {e}")))
    }

    /// The settings as `NAME:key=value,...` (what [`Acceleration::parse`] reads back).
    pub fn spec(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or_default();
        let settings: Vec<String> =
            value.as_object().map(|o| o.iter().filter(|(k, _)| *k != "method").map(|(k, v)| format!("{k}={v}")).collect()).unwrap_or_default();
        if settings.is_empty() {
            self.name().to_owned()
        } else {
            format!("{}:{}", self.name(), settings.join(","))
        }
    }

    /// A short name for tables: the method's name and the settings that differ from its preset
    /// for `family` (`sada`, `deepcache:interval=5`).
    pub fn label(&self, family: Family) -> String {
        let preset = Self::preset(self.name(), family).ok().and_then(|p| serde_json::to_value(p).ok());
        let value = serde_json::to_value(self).unwrap_or_default();
        let changed: Vec<String> = value
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, v)| *k != "method" && *k != "seed" && preset.as_ref().and_then(|p| p.get(k.as_str())) != Some(v))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        if changed.is_empty() {
            self.name().to_owned()
        } else {
            format!("{}:{}", self.name(), changed.join(","))
        }
    }

    /// Whether this is the unaccelerated baseline (`none`).
    pub fn is_baseline(&self) -> bool {
        matches!(self, Acceleration::None(_))
    }
}

/// Split `a=1,b=[2,3]` at the commas outside brackets.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_is_its_family_preset_with_the_given_settings() {
        assert_eq!(Acceleration::parse("sada", Family::Sdxl).unwrap(), Acceleration::Sada(SadaConfig::sdxl()));
        let a = Acceleration::parse("sada:acc_range=[5,40],max_interval=3", Family::StableDiffusion).unwrap();
        assert_eq!(a, Acceleration::Sada(SadaConfig { acc_range: (5, 40), max_interval: 3, ..SadaConfig::sd2() }));
        assert_eq!(Acceleration::parse(&a.spec(), Family::Flux).unwrap(), a, "spec() reads back");
        assert_eq!(Acceleration::parse("fewer-steps:steps=20", Family::Flux).unwrap().steps(50), 20);
        assert!(Acceleration::parse("none", Family::Sdxl).unwrap().is_baseline());
        assert_eq!(a.label(Family::StableDiffusion), "sada:acc_range=[5,40],max_interval=3");
        assert_eq!(Acceleration::parse("deepcache", Family::Sdxl).unwrap().label(Family::Sdxl), "deepcache");
    }

    #[test]
    fn bad_specs_name_what_is_wrong() {
        let e = Acceleration::parse("turbo", Family::Sdxl).unwrap_err().to_string();
        assert!(e.contains("unknown method `turbo`") && e.contains("sada"), "{e}");
        let e = Acceleration::parse("sada:max_intervall=3", Family::Sdxl).unwrap_err().to_string();
        assert!(e.contains("no setting `max_intervall`") && e.contains("max_interval"), "{e}");
        let e = Acceleration::parse("sada:max_interval", Family::Sdxl).unwrap_err().to_string();
        assert!(e.contains("not key=value"), "{e}");
        let e = Acceleration::parse("sada:max_interval=-1", Family::Sdxl).unwrap_err().to_string();
        assert!(e.contains("accel"), "{e}");
    }
}
