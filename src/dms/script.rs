//! Rhai-scripted schedulers (cargo feature `script`, on by default).
//!
//! A script is an expression (or a block of statements ending in one) evaluated once per
//! modality; it returns that modality's score. Weights are then
//! `clamp_renormalise(M * softmax(score / tau), [w_min, w_max])`.
//!
//! Variables of each evaluation:
//!
//! | name            | type  | value                                                     |
//! |-----------------|-------|-----------------------------------------------------------|
//! | `confidence`    | float | `c_m` in [0, 1]                                           |
//! | `uncertainty`   | float | `u_m` in [0, 1]                                           |
//! | `consistency`   | float | mean image/text consistency `s` of the request in [0, 1] |
//! | `is_image`      | bool  | this modality is an image (false for the text)            |
//! | `image_missing` | bool  | the request has no image                                  |
//! | `n_images`      | int   | number of images of the request                           |
//!
//! Sandbox: a raw Rhai engine with only the pure standard packages (arithmetic, logic, maths,
//! strings, arrays, maps); no module resolver (so `import` fails), no `eval`, `print`/`debug`
//! swallowed, and limits on operations (100,000 per evaluation, so an endless loop stops with an
//! error), expression depth, call depth, string, array and map sizes. Rhai has no file or network
//! functions of its own.

use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, Engine, Scope, AST};

use super::scheduler::{check_tau_bounds, param_error, weights_from_scores};
use super::{Bounds, DmsError, ModalityWeights, Scheduler, Signals};

/// A scheduler whose per-modality score is a Rhai script.
pub struct ScriptScheduler {
    name: String,
    source: String,
    /// Softmax temperature, > 0.
    pub tau: f32,
    /// Smallest weight.
    pub w_min: f32,
    /// Largest weight.
    pub w_max: f32,
    engine: Engine,
    ast: AST,
}

impl std::fmt::Debug for ScriptScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptScheduler")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("tau", &self.tau)
            .field("w_min", &self.w_min)
            .field("w_max", &self.w_max)
            .finish_non_exhaustive()
    }
}

/// The sandboxed engine every script runs in.
fn sandbox() -> Engine {
    let mut engine = Engine::new_raw();
    StandardPackage::new().register_into_engine(&mut engine);
    engine
        .set_max_operations(100_000)
        .set_max_expr_depths(64, 32)
        .set_max_call_levels(32)
        .set_max_string_size(1024)
        .set_max_array_size(1024)
        .set_max_map_size(64)
        .set_max_variables(256)
        .set_max_functions(64)
        .set_max_modules(0)
        .disable_symbol("eval")
        .on_print(|_| {})
        .on_debug(|_, _, _| {});
    engine
}

impl ScriptScheduler {
    /// Compiles `source` once and checks it by evaluating it on neutral signals (so syntax
    /// errors, unknown functions, endless loops and non-numeric results are caught at load);
    /// validates `tau` and the bounds. Errors are [`DmsError::Script`] for the source and
    /// [`DmsError::InvalidParameter`] for the numbers.
    pub fn new(
        name: &str,
        source: &str,
        tau: f32,
        w_min: f32,
        w_max: f32,
    ) -> Result<Self, DmsError> {
        check_tau_bounds(tau, w_min, w_max).map_err(param_error)?;
        let engine = sandbox();
        let ast = engine
            .compile(source)
            .map_err(|e| DmsError::Script(format!("syntax error: {e}")))?;
        let s = Self {
            name: name.to_string(),
            source: source.to_string(),
            tau,
            w_min,
            w_max,
            engine,
            ast,
        };
        s.weights(&Signals::neutral(1))?;
        Ok(s)
    }

    /// The script's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the script for one modality.
    fn score(
        &self,
        c: f32,
        u: f32,
        s: f32,
        is_image: bool,
        signals: &Signals,
    ) -> Result<f32, DmsError> {
        let mut scope = Scope::new();
        scope.push_constant("confidence", f64::from(c));
        scope.push_constant("uncertainty", f64::from(u));
        scope.push_constant("consistency", f64::from(s));
        scope.push_constant("is_image", is_image);
        scope.push_constant("image_missing", signals.image_missing);
        scope.push_constant("n_images", signals.images.len() as i64);
        let out: Dynamic = self
            .engine
            .eval_ast_with_scope(&mut scope, &self.ast)
            .map_err(|e| DmsError::Script(format!("{}: {e}", self.name)))?;
        if let Ok(f) = out.as_float() {
            Ok(f as f32)
        } else if let Ok(i) = out.as_int() {
            Ok(i as f32)
        } else {
            Err(DmsError::Script(format!(
                "{}: the script must return a number, not {}",
                self.name,
                out.type_name()
            )))
        }
    }
}

impl Scheduler for ScriptScheduler {
    fn name(&self) -> &str {
        &self.name
    }

    fn needs_signals(&self) -> bool {
        true
    }

    fn kind(&self) -> &str {
        "script"
    }

    fn weights(&self, signals: &Signals) -> Result<ModalityWeights, DmsError> {
        let s = signals.mean_consistency();
        let n = signals.images.len();
        let scores = signals
            .per_modality()
            .iter()
            .enumerate()
            .map(|(i, m)| self.score(m.confidence, m.uncertainty, s, i < n, signals))
            .collect::<Result<Vec<f32>, DmsError>>()?;
        let bounds = Bounds {
            w_min: self.w_min,
            w_max: self.w_max,
        };
        Ok(weights_from_scores(&scores, self.tau, bounds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn script(src: &str) -> Result<ScriptScheduler, DmsError> {
        ScriptScheduler::new("s", src, 1.0, 0.2, 2.0)
    }

    #[test]
    fn formula_scores_modalities() {
        let s = script("4.0 * confidence - 4 * uncertainty").unwrap();
        let mut sig = Signals::neutral(1);
        sig.images[0].confidence = 0.1;
        sig.text.confidence = 0.9;
        let w = s.weights(&sig).unwrap();
        assert!(w.images[0] < w.text);
        assert!((w.images[0] + w.text - 2.0).abs() < 1e-5);
        assert_eq!(s.source(), "4.0 * confidence - 4 * uncertainty");
    }

    #[test]
    fn statements_flags_and_integer_results() {
        let src = "let bonus = if is_image && !image_missing { n_images } else { 0 };\n\
                   print(\"swallowed\"); debug(bonus);\n\
                   bonus + max(consistency, 0.0) + abs(-1)";
        let s = script(src).unwrap();
        let w = s.weights(&Signals::neutral(2)).unwrap();
        assert!(w.images[0] > w.text);
        let int_only = script("if is_image { 1 } else { 0 }").unwrap();
        assert!(int_only.weights(&Signals::neutral(1)).is_ok());
    }

    #[test]
    fn syntax_errors_and_bad_results_fail_at_load() {
        assert!(matches!(script("1 +"), Err(DmsError::Script(_))));
        assert!(matches!(script("\"text\""), Err(DmsError::Script(_))));
        assert!(matches!(script("no_such_fn(1)"), Err(DmsError::Script(_))));
        assert!(matches!(
            ScriptScheduler::new("s", "1.0", 0.0, 0.2, 2.0),
            Err(DmsError::InvalidParameter { .. })
        ));
    }

    #[test]
    fn endless_loops_are_stopped_quickly() {
        let start = Instant::now();
        let e = script("loop {}").unwrap_err();
        assert!(matches!(e, DmsError::Script(_)), "{e}");
        // Passes the load check, loops at request time: stopped with an error, never hangs.
        let s = script("if confidence > 0.9 { while true {} } 1.0").unwrap();
        let mut sig = Signals::neutral(1);
        sig.text.confidence = 0.95;
        assert!(matches!(s.weights(&sig), Err(DmsError::Script(_))));
        let rec = script("fn f(x) { f(x + 1) } f(0)");
        assert!(matches!(rec, Err(DmsError::Script(_))));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn scripts_cannot_reach_files_or_modules() {
        for src in [
            "open(\"/etc/passwd\"); 1.0",
            "import \"/etc/passwd\" as p; 1.0",
            "eval(\"1.0\")",
            "read_file(\"/etc/passwd\"); 1.0",
        ] {
            assert!(script(src).is_err(), "{src} should fail");
        }
        let big = script("let s = \"\"; for i in 0..10000 { s += \"xxxxxxxxxx\"; } 1.0");
        assert!(big.is_err());
    }
}
