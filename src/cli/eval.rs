//! `llama-dms eval`: answers a generated suite under each DMS mode and writes the outcomes
//! (`items.jsonl`, appended as it goes, so `--resume` continues an interrupted run) and the
//! summary (`summary.json`, `summary.md`).

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::{exit_code, fail, write_report, ModelArgs};
use crate::engine::{DmsSettings, EngineError, EngineHandle};
use crate::eval::custom::{parse_spec, DataCondition, DataError, DataSet};
use crate::eval::dataset::{colour_grid, Item};
use crate::eval::grid::{data_grid_example, grid_example};
use crate::eval::report::{cells, consistency_aucs, groups, markdown, Summary};
use crate::eval::tasks::{caption, image_items, retrieve};
use crate::eval::{answer_item, mode_settings, parse_modes, Outcome};

/// Generated evaluation suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// Name the colour of a square under corrupted images and texts (for the demo model).
    ColourGrid,
    /// Suite v2: exactly one modality observably unreliable, balanced between the two, plus
    /// clean and symmetric-conflict controls; records signals, the unimodal answers, a
    /// fixed-weight grid and every mode, and reports signal AUCs, the control curve, the
    /// oracle, the best global weight and paired tests (see README Results).
    ColourTrust,
}

/// Arguments of `llama-dms eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Model and runtime.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Which suite (ignored with `--data`).
    #[arg(long, value_enum, default_value = "colour-grid")]
    pub suite: Suite,
    /// Your own VQA data instead of a generated suite: JSONL, one
    /// `{"image": "cat.jpg", "question": "...", "answers": ["black", "dark grey"]}` per line
    /// (`image` may be null; relative paths resolve against the file's directory).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With `--data`: corruptions to run besides `clean`, comma-separated: noise:SIGMA (full
    /// 0..255 range units), blur:RADIUS (pixels), occlude:FRACTION, missing, mismatch.
    #[arg(long)]
    pub corrupt: Option<String>,
    /// DMS modes to compare, comma-separated (off, rule, learned).
    #[arg(long, value_delimiter = ',', default_value = "off,rule")]
    pub modes: Vec<String>,
    /// Seed of the generated items (with `--data`: of the corruptions and mismatch pairs).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// colour-trust: several seeds, comma-separated (instead of `--seed`).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Items per condition (ignored with `--data`).
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
    /// Default: all three; with `--data` only vqa applies.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Option<Vec<String>>,
    /// Keep the outcomes already in `<out>/items.jsonl` and answer only the missing ones.
    #[arg(long)]
    pub resume: bool,
    /// Instead of evaluating, write scheduler training data here (JSONL for `train-scheduler`):
    /// per item with an image, the rule mode's signals and a grid of scored weight vectors.
    #[arg(long)]
    pub grid_out: Option<PathBuf>,
    /// `colour-trust` with `--resume`: answer the grid at these image weights again in the
    /// kept records (after a change in how weights apply), comma-separated; mode answers at
    /// those weights are replayed.
    #[arg(long, value_delimiter = ',', requires = "resume")]
    pub regrid: Vec<f32>,
    /// `colour-trust` with `--resume`: measure the signals of the kept records again (after a
    /// change in the signal passes), keeping their grids; scheduler modes are replayed.
    #[arg(long, requires = "resume")]
    pub remeasure: bool,
    /// `colour-trust` with `--resume`: replay the scheduler modes of the kept records from
    /// their signals again, also those they have (after a plugin was fitted again).
    #[arg(long, requires = "resume")]
    pub replay: bool,
}

/// One unit of work: a task on an item under a mode.
struct Job<'a> {
    task: &'a str,
    item: &'a Item,
    label: String,
    mode: &'a str,
    dms: &'a DmsSettings,
}

/// What identifies an outcome (for `--resume`): task, item, condition and mode.
type Key = (String, usize, String, String);

impl Job<'_> {
    fn key(&self) -> Key {
        let (task, mode) = (self.task.into(), self.mode.into());
        (task, self.item.id, self.label.clone(), mode)
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

/// One unit of work of a `--data` run: an item of the file under a condition and a mode.
struct DataJob<'a> {
    item: usize,
    condition: &'a DataCondition,
    mode: &'a str,
    dms: &'a DmsSettings,
}

/// A job of either kind of run.
enum Work<'a> {
    Suite(Job<'a>),
    Data(&'a DataSet, DataJob<'a>),
}

impl Work<'_> {
    fn key(&self) -> Key {
        match self {
            Work::Suite(j) => j.key(),
            Work::Data(_, j) => (
                "vqa".into(),
                j.item,
                j.condition.label.clone(),
                j.mode.into(),
            ),
        }
    }

    fn describe(&self) -> String {
        let (task, item, condition, mode) = self.key();
        format!("{task} item {item} {condition} / {mode}")
    }

    /// The outcome, or the exit code and message of the failure.
    fn run(&self, engine: &EngineHandle, max_tokens: usize) -> Result<Outcome, (u8, String)> {
        match self {
            Work::Suite(j) => j
                .run(engine, max_tokens)
                .map_err(|e| (exit_code(&e), e.to_string())),
            Work::Data(set, j) => set
                .answer(engine, j.item, j.condition, j.mode, j.dms, max_tokens)
                .map_err(|e| match e {
                    DataError::Engine(e) => (exit_code(&e), e.to_string()),
                    DataError::Image(e) => (1, e),
                }),
        }
    }
}

/// The jobs of a `--data` run: every (item, condition) pair that applies, under every mode.
fn data_jobs<'a>(
    set: &'a DataSet,
    conditions: &'a [DataCondition],
    modes: &'a [(String, DmsSettings)],
) -> Vec<Work<'a>> {
    let mut out = Vec::new();
    for (item, c) in set.jobs(conditions) {
        for (mode, dms) in modes {
            let job = DataJob {
                item,
                condition: &conditions[c],
                mode,
                dms,
            };
            out.push(Work::Data(set, job));
        }
    }
    out
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
    if args.suite == Suite::ColourTrust && args.data.is_none() {
        return super::trust::eval_trust(args);
    }
    let modes = match parse_modes(&args.modes) {
        Ok(s) => s,
        Err(e) => return fail(2, &e),
    };
    let (tasks, conditions) = match plan(args) {
        Ok(p) => p,
        Err(e) => return fail(2, &e),
    };
    let config = match args.model.engine_config() {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    let model_name = config
        .model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let data = match &args.data {
        Some(path) => match DataSet::load(path, config.max_image_pixels, args.seed) {
            Ok(set) => Some(set),
            Err(e) => return fail(2, &e),
        },
        None => None,
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        return fail(2, &format!("cannot create {}: {e}", args.out.display()));
    }
    let items = match (&data, args.suite) {
        (Some(set), _) => {
            let text_only = set.items.iter().filter(|i| i.image.is_none()).count();
            if text_only > 0 && conditions.len() > 1 {
                eprintln!("note: {text_only} text-only items are asked clean only");
            }
            Vec::new()
        }
        (None, _) => colour_grid(args.seed, args.per_condition),
    };
    let engine = match EngineHandle::start(config) {
        Ok(e) => e,
        Err(e) => return fail(exit_code(&e), &e.to_string()),
    };
    if let Some(path) = &args.grid_out {
        let Ok(rule) = mode_settings("rule") else {
            return fail(1, "the rule mode is missing");
        };
        return match &data {
            Some(set) => {
                let clean = DataCondition {
                    label: "clean".into(),
                    corruption: None,
                };
                write_grid(path, set.items.len(), |k| {
                    let item = &set.items[k];
                    let image = set.image(k, &clean).map_err(EngineError::InvalidRequest)?;
                    data_grid_example(&engine, item, image, &rule)
                })
            }
            None => write_grid(path, items.len(), |k| {
                grid_example(&engine, &items[k], &rule)
            }),
        };
    }
    let items_path = args.out.join("items.jsonl");
    let mut outcomes: Vec<Outcome> = Vec::new();
    if args.resume {
        if let Ok(text) = std::fs::read_to_string(&items_path) {
            outcomes.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
    }
    let done: HashSet<Key> = outcomes
        .iter()
        .map(|o| (o.task.clone(), o.item, o.condition.clone(), o.mode.clone()))
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
    let all: Vec<Work<'_>> = match &data {
        Some(set) => data_jobs(set, &conditions, &modes),
        None => jobs(&tasks, &items, &modes)
            .into_iter()
            .map(Work::Suite)
            .collect(),
    };
    let todo: Vec<Work<'_>> = all
        .into_iter()
        .filter(|w| !done.contains(&w.key()))
        .collect();
    let bar = progress(todo.len());
    for job in todo {
        bar.set_message(job.describe());
        let outcome = match job.run(&engine, args.max_tokens) {
            Ok(o) => o,
            Err((code, e)) => {
                bar.abandon();
                return fail(code, &format!("{}: {e}", job.describe()));
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
        suite: data
            .as_ref()
            .map_or("colour-grid".into(), |d| format!("data:{}", d.name)),
        seed: args.seed,
        per_condition: data.as_ref().map_or(args.per_condition, |d| d.items.len()),
        model: model_name,
        modes: args.modes.clone(),
        cells: cells(&outcomes, &args.modes),
        groups: groups(&outcomes, &args.modes),
        consistency_auc: consistency_aucs(&outcomes, &args.modes),
    };
    let md = markdown(&summary);
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    let files = [("summary.json", json.as_str()), ("summary.md", md.as_str())];
    let plots = crate::eval::plots::write_eval_plots(&summary, &outcomes, &args.out);
    write_report(&args.out, &files, plots, &md)
}

/// The tasks and (with `--data`) the conditions of a run, with the flags checked.
fn plan(args: &EvalArgs) -> Result<(Vec<String>, Vec<DataCondition>), String> {
    let tasks = args.tasks.clone().unwrap_or_else(|| match args.data {
        Some(_) => vec!["vqa".into()],
        None => ["vqa", "caption", "retrieval"].map(String::from).to_vec(),
    });
    let known = ["vqa", "caption", "retrieval"];
    if let Some(t) = tasks.iter().find(|t| !known.contains(&t.as_str())) {
        return Err(format!("unknown task {t:?} (vqa, caption or retrieval)"));
    }
    if args.data.is_none() {
        if args.corrupt.is_some() {
            return Err(
                "--corrupt needs --data (the colour-grid suite has its own conditions)".into(),
            );
        }
        if args.per_condition == 0 {
            return Err("--per-condition must be at least 1".into());
        }
        return Ok((tasks, Vec::new()));
    }
    if let Some(t) = tasks.iter().find(|t| *t != "vqa") {
        return Err(format!(
            "--data runs only the vqa task ({t} needs the colour-grid suite)"
        ));
    }
    let spec = args.corrupt.as_deref().unwrap_or("");
    let conditions = parse_spec(spec).map_err(|e| format!("--corrupt: {e}"))?;
    Ok((tasks, conditions))
}

pub(super) fn progress(len: usize) -> ProgressBar {
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// Writes the training example of each of `n` items that has one (`example(k)` of item `k`).
fn write_grid(
    path: &std::path::Path,
    n: usize,
    mut example: impl FnMut(usize) -> Result<Option<crate::dms::TrainExample>, EngineError>,
) -> ExitCode {
    let mut file = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return fail(2, &format!("cannot write {}: {e}", path.display())),
    };
    let bar = progress(n);
    let mut written = 0;
    for k in 0..n {
        match example(k) {
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
                return fail(exit_code(&e), &format!("item {k}: {e}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("wrote {written} training examples to {}", path.display());
    ExitCode::SUCCESS
}
