//! Scheduler plugin files and the [`Registry`] of schedulers by name.
//!
//! Every `*.toml` and `*.json` file of the plugin directory defines one scheduler; the schema is
//! documented in `plugins/README.md`. Both formats take the same fields; by convention rule and
//! script plugins are TOML and learned plugins (written by `train-scheduler`) are JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::learned::default_w_max;
use super::{DmsError, LearnedScheduler, OffScheduler, RuleScheduler, Scheduler};

/// A `kind = "rule"` plugin: every parameter but `name` is optional and defaults to
/// [`RuleScheduler::default`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    alpha: Option<f32>,
    beta: Option<f32>,
    tau: Option<f32>,
    gamma: Option<f32>,
    w_min: Option<f32>,
    w_max: Option<f32>,
    #[serde(default)]
    c_ref_image: f32,
    #[serde(default)]
    c_ref_text: f32,
    #[serde(default)]
    u_ref_image: f32,
    #[serde(default)]
    u_ref_text: f32,
    #[serde(default)]
    agree_gate: bool,
    sound_gate: Option<f32>,
    reliability: Option<super::Reliability>,
    model: Option<String>,
}

/// A script plugin's smallest weight when its file gives none.
fn default_w_min() -> f32 {
    0.2
}

/// A `kind = "script"` plugin: `name` and `source` are required.
#[cfg_attr(not(feature = "script"), allow(dead_code))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    name: String,
    source: String,
    #[serde(default = "one")]
    tau: f32,
    #[serde(default = "default_w_min")]
    w_min: f32,
    #[serde(default = "default_w_max")]
    w_max: f32,
}

fn one() -> f32 {
    1.0
}

/// Deserialises `value` into `T`; on failure returns `(field, reason)`, where `field` is the path
/// of the offending value (e.g. `tau`, `w1[0][2]`) or the name of an unknown or missing field.
pub(crate) fn deserialize_fields<T: DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let reason = e.inner().to_string();
        let path = e.path().to_string();
        let field = if path.is_empty() || path == "." {
            backticked(&reason).unwrap_or_default()
        } else {
            path
        };
        (field, reason)
    })
}

/// The first `` `quoted` `` word of a serde message (the field of "unknown field `x`").
fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

fn plugin_err(file: &Path, field: &str, reason: impl Into<String>) -> DmsError {
    DmsError::Plugin {
        file: file.to_path_buf(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Attaches the file to parameter and script errors.
fn in_file(file: &Path) -> impl Fn(DmsError) -> DmsError + '_ {
    move |e| match e {
        DmsError::InvalidParameter { field, reason } => plugin_err(file, &field, reason),
        DmsError::Script(reason) => plugin_err(file, "source", reason),
        other => other,
    }
}

fn check_name(file: &Path, name: &str) -> Result<(), DmsError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(plugin_err(
            file,
            "name",
            format!("\"{name}\" must be 1-64 characters of A-Z a-z 0-9 - _ ."),
        ));
    }
    if name == OffScheduler::NAME {
        return Err(plugin_err(
            file,
            "name",
            "\"off\" is the built-in scheduler",
        ));
    }
    Ok(())
}

/// Parses one plugin file's text (`file` only names it in errors and picks the format by its
/// extension: `.json` is JSON, anything else TOML).
pub fn parse_plugin(file: &Path, text: &str) -> Result<Arc<dyn Scheduler>, DmsError> {
    let is_json = file.extension().is_some_and(|e| e == "json");
    let value: serde_json::Value = if is_json {
        serde_json::from_str(text)
            .map_err(|e| plugin_err(file, "", format!("invalid JSON: {e}")))?
    } else {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map_or(0, |s| text[..s.start].lines().count().max(1));
            let msg = e.message().trim();
            plugin_err(file, "", format!("invalid TOML at line {line}: {msg}"))
        })?
    };
    let serde_json::Value::Object(mut map) = value else {
        return Err(plugin_err(file, "", "must be a table of fields"));
    };
    let kind = match map.remove("kind") {
        None => {
            return Err(plugin_err(
                file,
                "kind",
                "missing (rule, script or learned)",
            ))
        }
        Some(serde_json::Value::String(k)) => k,
        Some(other) => {
            return Err(plugin_err(
                file,
                "kind",
                format!("must be a string, not {other}"),
            ))
        }
    };
    let value = serde_json::Value::Object(map);
    let fields = |(field, reason): (String, String)| plugin_err(file, &field, reason);
    let scheduler: Arc<dyn Scheduler> = match kind.as_str() {
        "rule" => {
            let f: RuleFile = deserialize_fields(value).map_err(fields)?;
            check_name(file, &f.name)?;
            let d = RuleScheduler::default();
            let r = RuleScheduler {
                name: f.name,
                alpha: f.alpha.unwrap_or(d.alpha),
                beta: f.beta.unwrap_or(d.beta),
                tau: f.tau.unwrap_or(d.tau),
                gamma: f.gamma.unwrap_or(d.gamma),
                w_min: f.w_min.unwrap_or(d.w_min),
                w_max: f.w_max.unwrap_or(d.w_max),
                c_ref_image: f.c_ref_image,
                c_ref_text: f.c_ref_text,
                u_ref_image: f.u_ref_image,
                u_ref_text: f.u_ref_text,
                agree_gate: f.agree_gate,
                sound_gate: f.sound_gate,
                reliability: f.reliability,
                model: f.model,
            };
            r.validate().map_err(in_file(file))?;
            Arc::new(r)
        }
        "learned" => {
            let l: LearnedScheduler = deserialize_fields(value).map_err(fields)?;
            check_name(file, &l.name)?;
            l.validate().map_err(in_file(file))?;
            Arc::new(l)
        }
        "script" => {
            let f: ScriptFile = deserialize_fields(value).map_err(fields)?;
            check_name(file, &f.name)?;
            script_scheduler(file, f)?
        }
        other => {
            return Err(plugin_err(
                file,
                "kind",
                format!("unknown kind \"{other}\" (rule, script or learned)"),
            ))
        }
    };
    Ok(scheduler)
}

#[cfg(feature = "script")]
fn script_scheduler(file: &Path, f: ScriptFile) -> Result<Arc<dyn Scheduler>, DmsError> {
    let s = super::ScriptScheduler::new(&f.name, &f.source, f.tau, f.w_min, f.w_max)
        .map_err(in_file(file))?;
    Ok(Arc::new(s))
}

/// Why a script plugin is refused by a build without the `script` feature.
const NO_SCRIPT: &str = "script plugins need the `script` cargo feature";

#[cfg(not(feature = "script"))]
fn script_scheduler(file: &Path, _f: ScriptFile) -> Result<Arc<dyn Scheduler>, DmsError> {
    Err(plugin_err(file, "kind", NO_SCRIPT))
}

/// One registered scheduler.
#[derive(Debug, Clone)]
struct Entry {
    scheduler: Arc<dyn Scheduler>,
    file: Option<PathBuf>,
}

/// Schedulers by name: the plugin files of a directory plus the built-ins `off` and
/// `rule-default` (the latter only if no file defines it).
#[derive(Debug, Clone)]
pub struct Registry {
    entries: BTreeMap<String, Entry>,
}

impl Registry {
    /// Only the built-ins: `off` and `rule-default` ([`RuleScheduler::default`]).
    pub fn builtin() -> Registry {
        let mut r = Registry {
            entries: BTreeMap::new(),
        };
        r.add_builtins();
        r
    }

    fn add_builtins(&mut self) {
        let builtins: [Arc<dyn Scheduler>; 2] =
            [Arc::new(OffScheduler), Arc::new(RuleScheduler::default())];
        for s in builtins {
            self.entries.entry(s.name().to_string()).or_insert(Entry {
                scheduler: s,
                file: None,
            });
        }
    }

    /// Loads every `*.toml` and `*.json` file of `dir` (in file-name order), then adds the
    /// built-ins. Any bad file, or two files defining one name, fails the whole load with
    /// [`DmsError::Plugin`]; an unreadable directory or file gives [`DmsError::Io`]. A build
    /// without the `script` feature skips script plugins with a warning.
    pub fn load_dir(dir: &Path) -> Result<Registry, DmsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DmsError::Io { path, source }
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let ext = path.extension().and_then(|e| e.to_str());
            if matches!(ext, Some("toml" | "json")) && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut r = Registry {
            entries: BTreeMap::new(),
        };
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(io(&file))?;
            let scheduler = match parse_plugin(&file, &text) {
                Ok(s) => s,
                // A build without Rhai skips script plugins instead of refusing to start.
                Err(DmsError::Plugin { reason, .. }) if reason == NO_SCRIPT => {
                    tracing::warn!("{}: skipped: {NO_SCRIPT}", file.display());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let name = scheduler.name().to_string();
            if let Some(prev) = r.entries.get(&name) {
                let other = prev.file.as_deref().unwrap_or(Path::new("?"));
                let reason = format!("duplicate name \"{name}\" (also in {})", other.display());
                return Err(plugin_err(&file, "name", reason));
            }
            let entry = Entry {
                scheduler,
                file: Some(file),
            };
            r.entries.insert(name, entry);
        }
        r.add_builtins();
        Ok(r)
    }

    /// Registers a scheduler built in code (for runtimes embedding DMS). A name already taken
    /// gives [`DmsError::InvalidParameter`] for `name`.
    pub fn insert(&mut self, scheduler: Arc<dyn Scheduler>) -> Result<(), DmsError> {
        let name = scheduler.name().to_string();
        if self.entries.contains_key(&name) {
            return Err(DmsError::InvalidParameter {
                field: "name".into(),
                reason: format!("duplicate name \"{name}\""),
            });
        }
        let entry = Entry {
            scheduler,
            file: None,
        };
        self.entries.insert(name, entry);
        Ok(())
    }

    /// The scheduler called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Scheduler>> {
        self.entries.get(name).map(|e| Arc::clone(&e.scheduler))
    }

    /// The scheduler called `name`, or [`DmsError::UnknownScheduler`].
    pub fn require(&self, name: &str) -> Result<Arc<dyn Scheduler>, DmsError> {
        self.get(name)
            .ok_or_else(|| DmsError::UnknownScheduler(name.to_string()))
    }

    /// All names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The plugin file a scheduler came from (`None` for built-ins and inserted ones).
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.entries.get(name)?.file.as_deref()
    }

    /// The `rule-default` scheduler (from its plugin file if there is one, else built in).
    pub fn default_rule(&self) -> Arc<dyn Scheduler> {
        self.get(RuleScheduler::DEFAULT_NAME)
            .unwrap_or_else(|| Arc::new(RuleScheduler::default()))
    }

    /// The first learned scheduler by name, if any.
    pub fn default_learned(&self) -> Option<Arc<dyn Scheduler>> {
        self.entries
            .values()
            .find(|e| e.scheduler.kind() == "learned")
            .map(|e| Arc::clone(&e.scheduler))
    }
}

#[cfg(test)]
#[path = "plugins_tests.rs"]
mod tests;
