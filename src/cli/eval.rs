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
use crate::engine::{DmsSettings, EngineError, EngineHandle};
use crate::eval::dataset::{colour_grid, Item};
use crate::eval::grid::grid_example;
use crate::eval::report::{cells, consistency_aucs, groups, markdown, Summary};
use crate::eval::tasks::{caption, image_items, retrieve};
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
    /// Tasks, comma-separated: vqa (the colour question), caption ("Describe the image." must
    /// name the colour), retrieval (rank one caption per colour by likelihood: recall@1).
    #[arg(long, value_delimiter = ',', default_value = "vqa,caption,retrieval")]
    pub tasks: Vec<String>,
    /// Keep the outcomes already in `<out>/items.jsonl` and answer only the missing ones.
    #[arg(long)]
    pub resume: bool,
    /// Instead of evaluating, write scheduler training data here (JSONL for `train-scheduler`):
    /// per item with an image, the rule mode's signals and a grid of scored weight vectors.
    #[arg(long)]
    pub grid_out: Option<PathBuf>,
}

/// One unit of work: a task on an item under a mode.
struct Job<'a> {
    task: &'a str,
    item: &'a Item,
    label: String,
    mode: &'a str,
    dms: &'a DmsSettings,
}

impl Job<'_> {
    fn key(&self) -> (String, usize, String) {
        (self.task.into(), self.item.id, self.mode.into())
    }

    fn run(&self, engine: &EngineHandle, max_tokens: usize) -> Result<Outcome, EngineError> {
        match self.task {
            "caption" => caption(
                engine,
                self.item,
                &self.label,
                self.mode,
                self.dms,
                max_tokens,
            ),
            "retrieval" => retrieve(engine, self.item, &self.label, self.mode, self.dms),
            _ => answer_item(engine, self.item, self.mode, self.dms, max_tokens),
        }
    }
}

/// The jobs of `tasks` over `items` and the modes.
fn jobs<'a>(
    tasks: &'a [String],
    items: &'a [Item],
    modes: &'a [(String, DmsSettings)],
) -> Vec<Job<'a>> {
    let mut out = Vec::new();
    for task in tasks {
        let picked: Vec<(&Item, String)> = match task.as_str() {
            "vqa" => items
                .iter()
                .map(|i| (i, i.condition.name.to_string()))
                .collect(),
            _ => image_items(items),
        };
        for (item, label) in picked {
            for (mode, dms) in modes {
                out.push(Job {
                    task,
                    item,
                    label: label.clone(),
                    mode,
                    dms,
                });
            }
        }
    }
    out
}

pub(super) fn eval(args: &EvalArgs) -> ExitCode {
    let modes: Vec<(String, DmsSettings)> = match args
        .modes
        .iter()
        .map(|m| mode_settings(m).map(|s| (m.clone(), s)))
        .collect()
    {
        Ok(s) => s,
        Err(e) => return fail(2, &e),
    };
    if let Some(t) = args
        .tasks
        .iter()
        .find(|t| !["vqa", "caption", "retrieval"].contains(&t.as_str()))
    {
        return fail(
            2,
            &format!("unknown task {t:?} (vqa, caption or retrieval)"),
        );
    }
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
    let items = match args.suite {
        Suite::ColourGrid => colour_grid(args.seed, args.per_condition),
    };
    let engine = match EngineHandle::start(config) {
        Ok(e) => e,
        Err(e) => return fail(exit_code(&e), &e.to_string()),
    };
    if let Some(path) = &args.grid_out {
        return write_grid(&engine, &items, path);
    }
    let items_path = args.out.join("items.jsonl");
    let mut outcomes: Vec<Outcome> = Vec::new();
    if args.resume {
        if let Ok(text) = std::fs::read_to_string(&items_path) {
            outcomes.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
    }
    let done: HashSet<(String, usize, String)> = outcomes
        .iter()
        .map(|o| (o.task.clone(), o.item, o.mode.clone()))
        .collect();
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
    let todo: Vec<Job<'_>> = jobs(&args.tasks, &items, &modes)
        .into_iter()
        .filter(|j| !done.contains(&j.key()))
        .collect();
    let bar = progress(todo.len());
    for job in todo {
        bar.set_message(format!("{} {} / {}", job.task, job.label, job.mode));
        let outcome = match job.run(&engine, args.max_tokens) {
            Ok(o) => o,
            Err(e) => {
                bar.abandon();
                let what = format!("{} item {} ({})", job.task, job.item.id, job.mode);
                return fail(exit_code(&e), &format!("{what}: {e}"));
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

    let summary = Summary {
        suite: "colour-grid".into(),
        seed: args.seed,
        per_condition: args.per_condition,
        model: model_name,
        modes: args.modes.clone(),
        cells: cells(&outcomes, &args.modes),
        groups: groups(&outcomes, &args.modes),
        consistency_auc: consistency_aucs(&outcomes, &args.modes),
    };
    let md = markdown(&summary);
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    for (name, text) in [("summary.json", json.as_str()), ("summary.md", md.as_str())] {
        let path = args.out.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            return fail(1, &format!("cannot write {}: {e}", path.display()));
        }
    }
    match crate::eval::plots::write_eval_plots(&summary, &outcomes, &args.out) {
        Ok(paths) => paths
            .iter()
            .for_each(|p| eprintln!("wrote {}", p.display())),
        Err(e) => eprintln!("warning: plots not written: {e}"),
    }
    print!("{md}");
    eprintln!("wrote {}", args.out.display());
    ExitCode::SUCCESS
}

fn progress(len: usize) -> ProgressBar {
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// Writes one training example per item with an image (see [`grid_example`]).
fn write_grid(engine: &EngineHandle, items: &[Item], path: &std::path::Path) -> ExitCode {
    let mut file = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return fail(2, &format!("cannot write {}: {e}", path.display())),
    };
    let Ok(rule) = mode_settings("rule") else {
        return fail(1, "the rule mode is missing");
    };
    let bar = progress(items.len());
    let mut written = 0;
    for item in items {
        bar.set_message(item.condition.name);
        match grid_example(engine, item, &rule) {
            Ok(Some(example)) => {
                let line = serde_json::to_string(&example).unwrap_or_default();
                if let Err(e) = writeln!(file, "{line}") {
                    return fail(1, &format!("cannot write {}: {e}", path.display()));
                }
                written += 1;
            }
            Ok(None) => {}
            Err(e) => {
                bar.abandon();
                return fail(exit_code(&e), &format!("item {}: {e}", item.id));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("wrote {written} training examples to {}", path.display());
    ExitCode::SUCCESS
}
