//! Default values for config fields deserialised from diffusers JSON (serde's `default = "..."`
//! needs a function; these serve every config struct).

/// Any integer default: `#[serde(default = "crate::defaults::usize::<4>")]`.
pub fn usize<const N: usize>() -> usize {
    N
}

pub fn yes() -> bool {
    true
}

pub fn one_f64() -> f64 {
    1.0
}

pub fn epsilon() -> String {
    "epsilon".into()
}

pub fn linspace() -> String {
    "linspace".into()
}
