//! `llama-dms train-scheduler`: fits the learned DMS scheduler to grid scores.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::fail;

/// `train-scheduler` flags.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training data: one JSON object per line with `signals` and a `grid` of scored weights
    /// (`eval --grid-out` writes it); several files, comma-separated, are read as one.
    #[arg(long, value_delimiter = ',', required = true)]
    pub data: Vec<PathBuf>,
    /// Output plugin file; its stem (e.g. `learned-colours`) becomes the scheduler name.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Gradient steps per fit.
    #[arg(long, default_value_t = 2000)]
    pub epochs: usize,
    /// Weight of the modality-weight-consistency loss in the grid scores.
    #[arg(long, default_value_t = 1.0)]
    pub lambda_mwc: f32,
    /// Temperature of the softmax that turns a grid's scores into rewards.
    #[arg(long, default_value_t = 0.5)]
    pub temperature: f32,
    /// Features to use, comma-separated (default: every feature all examples have).
    #[arg(long, value_delimiter = ',')]
    pub features: Option<Vec<String>>,
    /// The agreement gate: a feature that, at 0.5 or more, gives its pair plain fusion (`none`:
    /// no gate). Used when every example has it.
    #[arg(long, default_value = "consistency.answer")]
    pub agree_feature: String,
    /// The model file the training data came from, recorded in the plugin (the engine warns
    /// when the plugin serves another model).
    #[arg(long)]
    pub fitted_for: Option<String>,
    /// A calibrated rule plugin (TOML) whose reliability models and sound gate the learned
    /// scheduler takes over: the reliabilities become features, and examples the sound gate
    /// passes get plain fusion and are not fitted.
    #[arg(long)]
    pub reliability_from: Option<PathBuf>,
}

/// The reliability models and sound gate of a rule plugin file.
#[derive(serde::Deserialize)]
struct RuleGates {
    reliability: Option<crate::dms::Reliability>,
    sound_gate: Option<f32>,
}

/// Reads `path`'s reliability models (required) and sound gate; errors name the file.
fn read_gates(path: &Path) -> Result<(crate::dms::Reliability, Option<f32>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let gates: RuleGates =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    let reliability = gates.reliability.ok_or_else(|| {
        format!(
            "{}: no [reliability.image] / [reliability.text] (calibrate it without \
             --no-reliability)",
            path.display()
        )
    })?;
    reliability
        .validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((reliability, gates.sound_gate))
}

pub(super) fn train_scheduler(args: &TrainArgs) -> ExitCode {
    use crate::dms::{read_examples, train, TrainConfig, TrainedInfo};
    let mut examples = Vec::new();
    for path in &args.data {
        match read_examples(path) {
            Ok(e) => examples.extend(e),
            Err(e) => return fail(2, &e.to_string()),
        }
    }
    let (reliability, sound_gate) = match &args.reliability_from {
        Some(path) => match read_gates(path) {
            Ok((r, gate)) => (Some(r), gate),
            Err(e) => return fail(2, &e),
        },
        None => (None, None),
    };
    let config = TrainConfig {
        lambda_mwc: args.lambda_mwc,
        epochs: args.epochs,
        seed: args.seed,
        temperature: args.temperature,
        features: args.features.clone(),
        agree_feature: (args.agree_feature != "none").then(|| args.agree_feature.clone()),
        reliability,
        sound_gate,
        ..TrainConfig::default()
    };
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(1)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut scheduler, report) = match train(&examples, &config, Some(&bar)) {
        Ok(r) => r,
        Err(e) => return fail(2, &e.to_string()),
    };
    bar.finish_and_clear();
    scheduler.name = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "learned".into());
    // Recorded as `llama-dms ...`, whatever path the binary was started from.
    let command: Vec<String> = std::iter::once("llama-dms".to_string())
        .chain(std::env::args().skip(1))
        .collect();
    scheduler.trained = Some(TrainedInfo {
        command: command.join(" "),
        examples: report.n_used,
        train_reward: report.train_reward,
        valid_reward: report.valid_reward,
        valid_reward_uniform: report.valid_reward_uniform,
        seed: args.seed,
        model: args.fitted_for.clone(),
    });
    if let Err(e) = std::fs::write(&args.out, scheduler.to_json()) {
        return fail(2, &format!("cannot write {}: {e}", args.out.display()));
    }
    println!(
        "{}: {} examples ({} cross-validation folds, {} without exactly one image left out, {} \
         gated to plain fusion by {}, {} by the sound gate, {} with the MWC loss at every grid point), {} features, {} candidate weights, l2 {}; reward of the \
         picked weight: cross-validated {:.3} (plain fusion {:.3}), train {:.3}",
        args.out.display(),
        report.n_used,
        report.n_folds,
        report.n_skipped,
        report.n_agreeing,
        scheduler.agree_feature.as_deref().unwrap_or("no gate"),
        report.n_sound,
        report.n_with_mwc,
        scheduler.features.len(),
        scheduler.candidates.len(),
        report.l2,
        report.valid_reward,
        report.valid_reward_uniform,
        report.train_reward
    );
    ExitCode::SUCCESS
}
