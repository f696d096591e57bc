//! The `colour-trust` evaluation (suite v2): items on which one modality at a time is
//! unreliable, the per-item records a runner writes (unimodal answers, signal variants, a grid
//! of fixed weights, each mode's answer), and everything derived from them without a model:
//! signal AUCs, control curves, oracle and global-best baselines, paired comparisons, the
//! Markdown report and plots, and the offline fit of the rule scheduler.

pub mod analysis;
pub mod calibrate;
pub mod record;
pub mod report;
pub mod stats;
pub mod suite;
pub mod summary;

#[cfg(test)]
mod testutil;

pub use analysis::{summarise, TrustMeta, TrustSummary};
pub use calibrate::{fit_rule, Fit};
pub use record::{GridAnswer, ModeAnswer, Scored, TrustRecord, GRID_WEIGHTS};
pub use report::{markdown, write_plots};
pub use suite::{colour_trust, TrustCondition, TrustItem, TRUST_CONDITIONS};
