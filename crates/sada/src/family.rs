//! Model families: what the published settings, the default solver and the solvers a model
//! accepts depend on. Every layer may read it (pipelines report it, methods choose their
//! presets by it), so it sits below all of them.

use serde::{Deserialize, Serialize};

use crate::solvers::SolverKind;

/// The kind of model a pipeline runs, as far as acceleration and sampling care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Stable Diffusion 1.x / 2.x and UNets like them.
    #[default]
    StableDiffusion,
    /// SDXL-style UNets (text_time conditioning).
    Sdxl,
    /// Flow-matching transformers.
    Flux,
}

impl Family {
    /// The solver SADA's published runs use: Euler for SDXL, flow-matching Euler for Flux,
    /// DPM-Solver++ otherwise.
    pub fn default_solver(self) -> SolverKind {
        match self {
            Family::Sdxl => SolverKind::EulerDiscrete,
            Family::Flux => SolverKind::FlowMatchEulerDiscrete,
            Family::StableDiffusion => SolverKind::DpmSolverMultistep,
        }
    }

    /// Whether a model of this family can be sampled with `solver`: diffusion models take the
    /// diffusion solvers, flow-matching models the flow solver.
    pub fn accepts(self, solver: SolverKind) -> bool {
        let flow = matches!(solver, SolverKind::FlowMatchEulerDiscrete);
        flow == matches!(self, Family::Flux)
    }

    /// The solvers [`accepts`](Self::accepts) allows, by their command-line names (`dpm++ or
    /// euler`, `flow`), for messages.
    pub fn solver_names(self) -> String {
        SolverKind::ALL.into_iter().filter(|&k| self.accepts(k)).map(SolverKind::cli_name).collect::<Vec<_>>().join(" or ")
    }
}

/// The architectures a checkpoint can hold: finer than [`Family`], since SD-1.x and SD-2.x
/// checkpoints differ in their text encoder and layout but share the published settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// SD-1.x: OpenAI CLIP-L text encoder, epsilon prediction.
    Sd1,
    /// SD-2.x: OpenCLIP-H text encoder (its last layer dropped), v prediction (as diffusers
    /// assumes for every SD-2 file).
    Sd2,
    /// SDXL base: CLIP-L and OpenCLIP-bigG with projection, `text_time` conditioning.
    Sdxl,
    /// FLUX.1 (Black Forest Labs' layout): the transformer alone, dev (guidance embedding)
    /// or schnell.
    Flux,
}

impl Architecture {
    /// The family whose settings apply.
    pub fn family(self) -> Family {
        match self {
            Architecture::Sd1 | Architecture::Sd2 => Family::StableDiffusion,
            Architecture::Sdxl => Family::Sdxl,
            Architecture::Flux => Family::Flux,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_accepts_its_default_solver_and_no_solver_of_the_other_kind() {
        for family in [Family::StableDiffusion, Family::Sdxl, Family::Flux] {
            assert!(family.accepts(family.default_solver()), "{family:?}");
        }
        assert!(!Family::Flux.accepts(SolverKind::DpmSolverMultistep));
        assert!(!Family::Sdxl.accepts(SolverKind::FlowMatchEulerDiscrete));
        assert!(Family::Sdxl.accepts(SolverKind::DpmSolverMultistep));
    }

    #[test]
    fn accepted_solvers_are_listed_by_their_command_line_names() {
        assert_eq!(Family::Flux.solver_names(), "flow");
        assert_eq!(Family::StableDiffusion.solver_names(), "dpm++ or euler");
        assert_eq!(Family::Sdxl.solver_names(), "dpm++ or euler");
    }
}
