//! `llama-dms eval --suite colour-trust` and `llama-dms calibrate`: records of the trust suite
//! (signals, unimodal answers, the fixed-weight grid, the schedulers' answers), their
//! diagnostics, and a rule plugin fitted to them.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::eval::{progress, EvalArgs};
use super::{exit_code, fail, write_report, ModelArgs};
use crate::dms::Registry;
use crate::engine::{pick_scheduler, DmsSettings, EngineConfig, EngineError, EngineHandle};
use crate::eval::parse_modes;
use crate::eval::trust::analysis::{summarise, TrustMeta};
use crate::eval::trust::record::{parse_jsonl, to_jsonl, TrustRecord};
use crate::eval::trust::report::{markdown, write_plots};
use crate::eval::trust::suite::{colour_trust, TrustItem};
use crate::eval::trust_run::{add_replayed_modes, regrid, remeasure, trust_record, TrustRun};

/// The items of `seeds`, `per_condition` per condition and seed (ids unique over the seeds).
fn items_of(seeds: &[u64], per_condition: usize) -> Vec<TrustItem> {
    let mut items = Vec::new();
    for &seed in seeds {
        for mut item in colour_trust(seed, per_condition) {
            item.id = items.len();
            items.push(item);
        }
    }
    items
}

/// Answers every item not yet in `path` (JSONL, appended as it goes; with `resume` the
/// records already there are kept) and returns all records.
fn collect(
    engine: &EngineHandle,
    registry: &Registry,
    items: &[TrustItem],
    run: &TrustRun,
    path: &Path,
    resume: bool,
) -> Result<Vec<TrustRecord>, (u8, String)> {
    let mut records = Vec::new();
    if resume {
        if let Ok(text) = std::fs::read_to_string(path) {
            records = parse_jsonl(&text).map_err(|e| (2, format!("{}: {e}", path.display())))?;
        }
    }
    // Records kept from an earlier run get the modes they lack, replayed from their signals.
    let by_key: HashMap<(u64, usize), &TrustItem> =
        items.iter().map(|i| ((i.seed, i.id), i)).collect();
    let mut replayed = 0;
    let bar = progress(records.len());
    for record in &mut records {
        if let Some(item) = by_key.get(&(record.seed, record.item)) {
            let at = |e: EngineError| (exit_code(&e), format!("item {}: {e}", item.id));
            let remeasured = remeasure(engine, item, record, run).map_err(at)?;
            let regridded = regrid(engine, item, record, run).map_err(at)? || remeasured;
            let added = add_replayed_modes(engine, registry, item, record, run).map_err(at)?;
            replayed += usize::from(added || regridded);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if replayed > 0 {
        std::fs::write(path, to_jsonl(&records))
            .map_err(|e| (1, format!("cannot write {}: {e}", path.display())))?;
        eprintln!("{replayed} kept records got their missing modes (replayed from their signals)");
    }
    let done: HashSet<(u64, usize)> = records.iter().map(|r| (r.seed, r.item)).collect();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(resume)
        .write(true)
        .truncate(!resume)
        .open(path)
        .map_err(|e| (2, format!("cannot write {}: {e}", path.display())))?;
    let todo: Vec<&TrustItem> = items
        .iter()
        .filter(|i| !done.contains(&(i.seed, i.id)))
        .collect();
    let bar = progress(todo.len());
    for item in todo {
        bar.set_message(format!("{} seed {}", item.condition.name, item.seed));
        let record = trust_record(engine, item, run).map_err(|e| {
            bar.abandon();
            (exit_code(&e), format!("item {}: {e}", item.id))
        })?;
        let line = serde_json::to_string(&record).unwrap_or_default();
        writeln!(file, "{line}").map_err(|e| (1, format!("{}: {e}", path.display())))?;
        records.push(record);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(records)
}

/// The engine for `config` and the schedulers it serves (whose weights `--resume` replays);
/// a load failure is reported and becomes the exit code.
fn start_engine(config: EngineConfig) -> Result<(Arc<Registry>, EngineHandle), ExitCode> {
    let registry = Arc::clone(&config.schedulers);
    match EngineHandle::start(config) {
        Ok(engine) => Ok((registry, engine)),
        Err(e) => Err(fail(exit_code(&e), &e.to_string())),
    }
}

/// The model's file name, as plugins record it.
pub(super) fn model_file_name(model: &Path) -> String {
    model
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `eval --suite colour-trust`.
pub(super) fn eval_trust(args: &EvalArgs) -> ExitCode {
    let modes = match parse_modes(&args.modes) {
        Ok(m) => m,
        Err(e) => return fail(2, &e),
    };
    let seeds = args.seeds.clone().unwrap_or_else(|| vec![args.seed]);
    let config = match args.model.engine_config() {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    let model = model_file_name(&config.model);
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        return fail(2, &format!("cannot create {}: {e}", args.out.display()));
    }
    let (registry, engine) = match start_engine(config) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let run = TrustRun {
        max_tokens: args.max_tokens,
        modes,
        mwc: args.grid_out.is_some(),
        regrid: args.regrid.clone(),
        remeasure: args.remeasure,
        replay: args.replay,
        ..TrustRun::default()
    };
    let items = items_of(&seeds, args.per_condition);
    let path = args.out.join("records.jsonl");
    let records = match collect(&engine, &registry, &items, &run, &path, args.resume) {
        Ok(r) => r,
        Err((code, e)) => return fail(code, &e),
    };
    if let Some(grid_out) = &args.grid_out {
        if let Err(e) = write_training_examples(&records, grid_out) {
            return fail(1, &e);
        }
    }
    let mut records = records;
    let reliability_of = add_reliabilities(&registry, &run, &mut records);
    let (default_image_key, default_text_key) = match &reliability_of {
        Some(_) => (
            "image.reliability".to_string(),
            "text.reliability".to_string(),
        ),
        None => (
            format!("image.{}", run.measure.confidence.key()),
            format!("text.{}", run.measure.confidence.key()),
        ),
    };
    if let Some(mode) = &reliability_of {
        eprintln!("reliability variants are those of {mode}'s fitted models");
    }
    let meta = TrustMeta {
        model,
        seeds,
        per_condition: args.per_condition,
        modes: args.modes.clone(),
        default_image_key,
        default_text_key,
    };
    let summary = summarise(&records, &meta);
    let md = markdown(&summary);
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    let files = [("summary.json", json.as_str()), ("summary.md", md.as_str())];
    write_report(&args.out, &files, write_plots(&summary, &args.out), &md)
}

/// Adds `image.reliability` and `text.reliability` to the variants of `records` (for the
/// report only): the fitted reliabilities of the first mode of `run` whose scheduler has
/// reliability models. Returns that mode's name, `None` if no mode has them.
fn add_reliabilities(
    registry: &Registry,
    run: &TrustRun,
    records: &mut [TrustRecord],
) -> Option<String> {
    let (mode, scheduler) = run.modes.iter().find_map(|(name, dms)| {
        let s = pick_scheduler(registry, dms).ok()??;
        let has_models = records
            .iter()
            .filter_map(|r| r.scheduler_signals())
            .any(|sig| s.reliabilities(&sig).is_some());
        has_models.then(|| (name.clone(), s))
    })?;
    for r in records.iter_mut() {
        let Some(values) = r
            .scheduler_signals()
            .and_then(|s| scheduler.reliabilities(&s))
        else {
            continue;
        };
        if let [image, text] = values[..] {
            r.variants.insert("image.reliability".into(), image);
            r.variants.insert("text.reliability".into(), text);
        }
    }
    Some(mode)
}

/// Colour log-odds beyond this are clipped in training examples; an answer that names no
/// colour scores `-LOG_ODDS_CLIP` (as wrong as an answer can be).
const LOG_ODDS_CLIP: f32 = 4.0;

/// Writes the records as `train-scheduler` examples: the signals with their variants, per
/// grid point the colour log-odds (clipped to +/- [`LOG_ODDS_CLIP`]) as the score (`loglik`)
/// and the MWC loss, and the suite seed as the group.
fn write_training_examples(records: &[TrustRecord], path: &Path) -> Result<(), String> {
    let mut out = String::new();
    let mut n = 0;
    for r in records {
        let Some(signals) = r.scheduler_signals() else {
            continue;
        };
        let grid: Vec<crate::dms::GridPoint> = r
            .grid
            .iter()
            .map(|g| crate::dms::GridPoint {
                weights: vec![g.image_weight, 2.0 - g.image_weight],
                loglik: g
                    .scored
                    .log_odds
                    .map_or(-LOG_ODDS_CLIP, |x| x.clamp(-LOG_ODDS_CLIP, LOG_ODDS_CLIP)),
                mwc: g.mwc,
            })
            .collect();
        if grid.len() < 2 {
            continue;
        }
        let example = crate::dms::TrainExample {
            signals,
            grid,
            group: r.suite_seed,
        };
        out.push_str(&serde_json::to_string(&example).unwrap_or_default());
        out.push('\n');
        n += 1;
    }
    std::fs::write(path, out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("wrote {n} training examples to {}", path.display());
    Ok(())
}

/// Arguments of `llama-dms calibrate`.
#[derive(Debug, Clone, Args)]
pub struct CalibrateArgs {
    /// Model and runtime.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Seeds of the colour-trust items to calibrate on (keep them apart from the seeds you
    /// evaluate on).
    #[arg(long, value_delimiter = ',', default_value = "100,101,102")]
    pub seeds: Vec<u64>,
    /// Items per condition and seed.
    #[arg(long, default_value_t = 10)]
    pub per_condition: usize,
    /// Records to fit instead of answering the suite (`records.jsonl` files of `eval --suite
    /// colour-trust` or of earlier calibrate runs, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub records: Vec<PathBuf>,
    /// Where the records of this run go (kept for `--records` and `--resume`).
    #[arg(long, default_value = "results/calibrate/records.jsonl")]
    pub records_out: PathBuf,
    /// Keep the records already in `--records-out` and answer only the missing items.
    #[arg(long)]
    pub resume: bool,
    /// The rule plugin to write.
    #[arg(long, default_value = "plugins/rule-default.toml")]
    pub out: PathBuf,
    /// The plugin's scheduler name.
    #[arg(long, default_value = "rule-default")]
    pub name: String,
    /// Longest answer in tokens.
    #[arg(long, default_value_t = 12)]
    pub max_tokens: usize,
    /// Share of the clean items whose weights must stay within 1 +/- 0.05 (0 fits for
    /// accuracy alone).
    #[arg(long, default_value_t = 0.95)]
    pub clean_share: f64,
    /// Read the confidence as it is, without fitting reliability models to the records
    /// (whose inputs are labelled sound or degraded by their condition).
    #[arg(long)]
    pub no_reliability: bool,
}

/// `llama-dms calibrate`.
pub(super) fn calibrate(args: &CalibrateArgs) -> ExitCode {
    let config = match args.model.engine_config() {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    let model = model_file_name(&config.model);
    let records = match args.records.as_slice() {
        [] => {
            if let Some(dir) = args.records_out.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let (registry, engine) = match start_engine(config) {
                Ok(started) => started,
                Err(code) => return code,
            };
            let run = TrustRun {
                max_tokens: args.max_tokens,
                measure: DmsSettings::mode(crate::engine::DmsMode::Rule),
                ..TrustRun::default()
            };
            let items = items_of(&args.seeds, args.per_condition);
            match collect(
                &engine,
                &registry,
                &items,
                &run,
                &args.records_out,
                args.resume,
            ) {
                Ok(r) => r,
                Err((code, e)) => return fail(code, &e),
            }
        }
        paths => {
            let mut all = Vec::new();
            for path in paths {
                let text = match std::fs::read_to_string(path) {
                    Ok(t) => t,
                    Err(e) => return fail(2, &format!("cannot read {}: {e}", path.display())),
                };
                match parse_jsonl(&text) {
                    Ok(r) => all.extend(r),
                    Err(e) => return fail(2, &format!("{}: {e}", path.display())),
                }
            }
            all
        }
    };
    let base = crate::dms::RuleScheduler {
        name: args.name.clone(),
        ..crate::dms::RuleScheduler::default()
    };
    let fit = crate::eval::trust::calibrate::fit_rule_with(
        &records,
        &base,
        args.clean_share,
        !args.no_reliability,
    );
    let mut rule = fit.rule.clone();
    rule.name = args.name.clone();
    rule.model = Some(model.clone());
    let command: Vec<String> = std::iter::once("llama-dms".to_string())
        .chain(std::env::args().skip(1))
        .collect();
    let toml = rule_plugin_toml(&rule, &command.join(" "), &fit_note(&fit, records.len()));
    if let Err(e) = std::fs::write(&args.out, toml) {
        return fail(2, &format!("cannot write {}: {e}", args.out.display()));
    }
    println!(
        "{}: fitted for {model} on {} records: accuracy {:.3} (off {:.3}), clean within 1 ± 0.05: {:.3}{}",
        args.out.display(),
        records.len(),
        fit.train_accuracy,
        fit.off_accuracy,
        fit.clean_within,
        if fit.constraint_met { "" } else { " (constraint NOT met)" }
    );
    ExitCode::SUCCESS
}

fn fit_note(fit: &crate::eval::trust::calibrate::Fit, n: usize) -> String {
    format!(
        "{n} records, {} candidates: replayed accuracy {:.3} (off {:.3}); clean inputs within 1 +/- 0.05: {:.3}",
        fit.candidates_tried, fit.train_accuracy, fit.off_accuracy, fit.clean_within
    )
}

/// The TOML text of a calibrated rule plugin.
pub fn rule_plugin_toml(rule: &crate::dms::RuleScheduler, command: &str, note: &str) -> String {
    format!(
        "# A rule scheduler calibrated by `llama-dms calibrate` (see plugins/README.md):\n\
         #   score_m = alpha * (c_m - c_ref) - beta * (u_m - u_ref)    refs per kind (image, text)\n\
         #   w_soft  = M * softmax(score / tau); lambda = clamp(gamma * s); w = lambda + (1 - lambda) * w_soft\n\
         #   clamped to [w_min, w_max] and renormalised to sum M; with agree_gate, all 1 when the\n\
         #   unimodal answers agree (consistency.answer), with sound_gate when every c_m is at\n\
         #   least the gate; c_m is the confidence, or the reliability below when there is one.\n\
         # Command: {command}\n\
         # Fit: {note}\n\
         kind = \"rule\"\n\
         name = \"{}\"\n\
         model = \"{}\"\n\
         alpha = {}\nbeta = {}\ntau = {}\ngamma = {}\nw_min = {}\nw_max = {}\n\
         c_ref_image = {}\nc_ref_text = {}\nu_ref_image = {}\nu_ref_text = {}\nagree_gate = {}\n{}",
        rule.name,
        rule.model.as_deref().unwrap_or_default(),
        rule.alpha,
        rule.beta,
        rule.tau,
        rule.gamma,
        rule.w_min,
        rule.w_max,
        rule.c_ref_image,
        rule.c_ref_text,
        rule.u_ref_image,
        rule.u_ref_text,
        rule.agree_gate,
        rule.sound_gate
            .map_or(String::new(), |g| format!("sound_gate = {g}\n")),
    ) + reliability_toml(rule).as_str()
}

/// The `[reliability.image]` and `[reliability.text]` tables of a rule with reliability
/// models (empty without).
fn reliability_toml(rule: &crate::dms::RuleScheduler) -> String {
    #[derive(serde::Serialize)]
    struct Tables<'a> {
        reliability: &'a crate::dms::Reliability,
    }
    let Some(reliability) = &rule.reliability else {
        return String::new();
    };
    let tables = toml::to_string(&Tables { reliability }).unwrap_or_default();
    format!(
        "# c_m is the modality's reliability: sigmoid(bias + sum weights * (x - mean) / scale)\n\
         # over the measured variants named in features, fitted to sound and degraded inputs.\n{tables}"
    )
}
