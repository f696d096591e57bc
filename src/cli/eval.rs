//! `llama-dms eval`: answers a generated suite under each DMS mode and writes the outcomes
//! (`items.jsonl`, appended as it goes, so `--resume` continues an interrupted run) and the
//! summary (`summary.json`, `summary.md`).

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::{exit_code, fail, ModelArgs};
use crate::engine::EngineHandle;
use crate::eval::dataset::{colour_grid, CONDITIONS};
use crate::eval::report::{cells, groups, markdown, Summary};
use crate::eval::{answer_item, mode_settings, Outcome};

/// Generated evaluation suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// Name the colour of a square under corrupted images and texts (for the demo model).
    ColourGrid,
}

/// Arguments of `llama-dms eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Model and runtime.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Which suite.
    #[arg(long, value_enum, default_value = "colour-grid")]
    pub suite: Suite,
    /// DMS modes to compare, comma-separated (off, rule, learned).
    #[arg(long, value_delimiter = ',', default_value = "off,rule")]
    pub modes: Vec<String>,
    /// Seed of the generated items.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Items per condition.
    #[arg(long, default_value_t = 10)]
    pub per_condition: usize,
    /// Longest answer in tokens.
    #[arg(long, default_value_t = 12)]
    pub max_tokens: usize,
    /// Output directory.
    #[arg(long, default_value = "results/eval")]
    pub out: PathBuf,
    /// Keep the outcomes already in `<out>/items.jsonl` and answer only the missing ones.
    #[arg(long)]
    pub resume: bool,
}

pub(super) fn eval(args: &EvalArgs) -> ExitCode {
    let settings: Vec<_> = match args.modes.iter().map(|m| mode_settings(m)).collect() {
        Ok(s) => s,
        Err(e) => return fail(2, &e),
    };
    if args.per_condition == 0 {
        return fail(2, "--per-condition must be at least 1");
    }
    let config = match args.model.engine_config() {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    let model_name = config
        .model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        return fail(2, &format!("cannot create {}: {e}", args.out.display()));
    }
    let items_path = args.out.join("items.jsonl");
    let mut outcomes: Vec<Outcome> = Vec::new();
    if args.resume {
        if let Ok(text) = std::fs::read_to_string(&items_path) {
            outcomes.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
    }
    let done: HashSet<(usize, String)> =
        outcomes.iter().map(|o| (o.item, o.mode.clone())).collect();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(args.resume)
        .write(true)
        .truncate(!args.resume)
        .open(&items_path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return fail(2, &format!("cannot write {}: {e}", items_path.display())),
    };

    let items = match args.suite {
        Suite::ColourGrid => colour_grid(args.seed, args.per_condition),
    };
    let engine = match EngineHandle::start(config) {
        Ok(e) => e,
        Err(e) => return fail(exit_code(&e), &e.to_string()),
    };
    let todo: Vec<_> = items
        .iter()
        .flat_map(|item| args.modes.iter().zip(&settings).map(move |m| (item, m)))
        .filter(|(item, (mode, _))| !done.contains(&(item.id, mode.to_string())))
        .collect();
    let bar = ProgressBar::new(todo.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for (item, (mode, dms)) in todo {
        bar.set_message(format!("{} / {mode}", item.condition.name));
        let outcome = match answer_item(&engine, item, mode, dms, args.max_tokens) {
            Ok(o) => o,
            Err(e) => {
                bar.abandon();
                return fail(exit_code(&e), &format!("item {} ({mode}): {e}", item.id));
            }
        };
        let line = serde_json::to_string(&outcome).unwrap_or_default();
        if let Err(e) = writeln!(file, "{line}") {
            return fail(1, &format!("cannot write {}: {e}", items_path.display()));
        }
        outcomes.push(outcome);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let conditions: Vec<&str> = CONDITIONS.iter().map(|c| c.name).collect();
    let summary = Summary {
        suite: "colour-grid".into(),
        seed: args.seed,
        per_condition: args.per_condition,
        model: model_name,
        modes: args.modes.clone(),
        cells: cells(&outcomes, &conditions, &args.modes),
        groups: groups(&outcomes, &args.modes),
    };
    let md = markdown(&summary);
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    for (name, text) in [("summary.json", json.as_str()), ("summary.md", md.as_str())] {
        let path = args.out.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            return fail(1, &format!("cannot write {}: {e}", path.display()));
        }
    }
    print!("{md}");
    eprintln!("wrote {}", args.out.display());
    ExitCode::SUCCESS
}
