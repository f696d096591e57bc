//! `llama-dms train-scheduler`: fits the learned DMS scheduler to grid scores.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::fail;

/// `train-scheduler` flags.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training data: one JSON object per line with `signals` and a `grid` of scored weights.
    #[arg(long)]
    pub data: PathBuf,
    /// Output plugin file; its stem (e.g. `learned-colours`) becomes the scheduler name.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of initialisation and train/validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Gradient steps.
    #[arg(long, default_value_t = 1000)]
    pub epochs: usize,
    /// Weight of the modality-weight-consistency loss in the grid scores.
    #[arg(long, default_value_t = 1.0)]
    pub lambda_mwc: f32,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 8)]
    pub hidden: usize,
    /// The model file the training data came from, recorded in the plugin (the engine warns
    /// when the plugin serves another model).
    #[arg(long)]
    pub fitted_for: Option<String>,
}

pub(super) fn train_scheduler(args: &TrainArgs) -> ExitCode {
    use crate::dms::{read_examples, train, TrainConfig, TrainedInfo};
    let examples = match read_examples(&args.data) {
        Ok(e) => e,
        Err(e) => return fail(2, &e.to_string()),
    };
    let config = TrainConfig {
        lambda_mwc: args.lambda_mwc,
        hidden: args.hidden,
        epochs: args.epochs,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(args.epochs as u64)
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
        examples: examples.len(),
        train_loss: report.train_loss,
        valid_loss: report.valid_loss,
        seed: args.seed,
        model: args.fitted_for.clone(),
    });
    if let Err(e) = std::fs::write(&args.out, scheduler.to_json()) {
        return fail(2, &format!("cannot write {}: {e}", args.out.display()));
    }
    println!(
        "{}: {} train / {} validation examples; loss {:.4} -> train {:.4}, validation {:.4}",
        args.out.display(),
        report.n_train,
        report.n_valid,
        report.initial_train_loss,
        report.train_loss,
        report.valid_loss
    );
    ExitCode::SUCCESS
}
