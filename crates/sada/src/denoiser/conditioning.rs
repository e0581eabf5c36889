//! The conditioning a denoiser reads: named tensors, batch-first.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Named conditioning tensors, batch-first, named as diffusers names the pipeline arguments
/// (`encoder_hidden_states`, `text_embeds`, `time_ids`, ...).
#[derive(Debug, Clone, Default)]
pub struct Conditioning {
    tensors: BTreeMap<String, Tensor>,
}

impl Conditioning {
    /// No tensors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the tensor `name`.
    pub fn with(mut self, name: impl Into<String>, t: Tensor) -> Self {
        self.tensors.insert(name.into(), t);
        self
    }

    /// The tensor `name`; an error when it is missing.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::param("conditioning", format!("missing tensor `{name}`")))
    }

    /// The tensors' names, in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|k| k.as_str())
    }

    /// Image `i`'s conditioning: every tensor's row `i`.
    pub fn image(&self, i: usize) -> Result<Conditioning> {
        let tensors = self.tensors.iter().map(|(k, t)| Ok((k.clone(), t.narrow(0, i, 1)?))).collect::<Result<_>>()?;
        Ok(Conditioning { tensors })
    }

    /// Stack `first` and `second` along the batch dimension, tensor by tensor (same names required).
    pub fn concat(first: &Conditioning, second: &Conditioning) -> Result<Conditioning> {
        let a: Vec<&str> = first.names().collect();
        let b: Vec<&str> = second.names().collect();
        if a != b {
            return Err(Error::Shape { what: "conditioning".into(), expected: format!("{a:?}"), got: format!("{b:?}") });
        }
        let mut out = Conditioning::new();
        for (name, t) in &first.tensors {
            let u = &second.tensors[name];
            if t.dims()[1..] != u.dims()[1..] {
                return Err(Error::Shape {
                    what: format!("conditioning tensor `{name}`"),
                    expected: format!("{:?}", t.dims()),
                    got: format!("{:?}", u.dims()),
                });
            }
            out.tensors.insert(name.clone(), Tensor::cat(&[t, u], 0)?);
        }
        Ok(out)
    }
}
