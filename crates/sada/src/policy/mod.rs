//! Acceleration policies: what each solver step costs.
//!
//! The sampling loop asks the policy for a [`StepPlan`] before each step. A computed step
//! carries a [`TokenPlan`](crate::denoiser::TokenPlan) for the denoiser, and the policy may serve branches of the network
//! from its caches while it runs (through its [`SiteHook`](crate::denoiser::SiteHook)); a skipped step gets its
//! prediction from [`Policy::substitute`]. After the solver has stepped, [`Policy::observe`]
//! shows the policy what happened so it can plan the next step.
//!
//! [`Acceleration`] names every policy as a value: the unaccelerated baseline, SADA and its
//! rivals, each built from its own settings.

pub mod acceleration;
pub mod adaptive;
pub mod baseline;
pub mod deepcache;
pub mod fbcache;
pub mod lagrange;
pub mod method;
pub mod plan;
pub mod sada;
pub mod sada_plus;
pub mod taylorseer;
pub mod teacache;

pub use acceleration::Acceleration;
pub use baseline::NoAcceleration;
pub use method::Method;
pub use plan::{Decision, Observation, Policy, SkipKind, StepPlan};
pub use sada::{Sada, SadaConfig};
