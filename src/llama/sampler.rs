//! llama.cpp's sampler chain: penalties, grammar, top-k/top-p/min-p, temperature, seeded draw.

use std::ffi::{c_char, CStr, CString};
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::{Context, LlamaError, Model, Result, Token};

/// Sampling settings. `temperature <= 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerParams {
    /// Softmax temperature; 0 or below picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: i32,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f32,
    /// Locally typical sampling mass (1 = off).
    pub typical_p: f32,
    /// Drop tokens below `min_p` times the top probability (0 = off).
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    pub repeat_penalty: f32,
    /// OpenAI-style frequency penalty (0 = off).
    pub frequency_penalty: f32,
    /// OpenAI-style presence penalty (0 = off).
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: i32,
    /// Seed of the random draw.
    pub seed: u32,
    /// Optional GBNF grammar constraining the output.
    pub grammar: Option<String>,
    /// Never pick an end-of-generation token (generate exactly `max_tokens`; for benchmarks).
    pub ignore_eos: bool,
    /// Biases added to tokens' logits before sampling (ids outside the vocabulary are ignored).
    pub logit_bias: Vec<(Token, f32)>,
}

impl Default for SamplerParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            typical_p: 1.0,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
            grammar: None,
            ignore_eos: false,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplerParams {
    /// Greedy decoding (deterministic).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// A sampler chain.
pub struct Sampler {
    ptr: NonNull<sys::llama_sampler>,
}

impl Sampler {
    /// Builds the chain for `model`.
    pub fn new(model: &Model, params: &SamplerParams) -> Result<Self> {
        // SAFETY: default chain params; the chain owns every sampler added to it.
        let chain =
            unsafe { sys::llama_sampler_chain_init(sys::llama_sampler_chain_default_params()) };
        let chain =
            NonNull::new(chain).ok_or_else(|| LlamaError::Sampler("allocation failed".into()))?;
        let sampler = Self { ptr: chain };
        // SAFETY: the vocab belongs to the live model.
        let vocab = unsafe { sys::llama_model_get_vocab(model.as_ptr()) };
        if let Some(grammar) = &params.grammar {
            let g = CString::new(grammar.as_str())
                .map_err(|_| LlamaError::Sampler("grammar contains a NUL byte".into()))?;
            // SAFETY: valid vocab and NUL-terminated strings; null on an invalid grammar.
            let s =
                unsafe { sys::llama_rs_sampler_init_grammar(vocab, g.as_ptr(), c"root".as_ptr()) };
            sampler.add(s, "invalid grammar")?;
        }
        let n_vocab = model.n_vocab() as i32;
        let eog_bans = (0..n_vocab)
            .filter(|&t| params.ignore_eos && model.is_eog(t))
            .map(|t| (t, f32::NEG_INFINITY));
        let bans: Vec<sys::llama_logit_bias> = params
            .logit_bias
            .iter()
            .copied()
            .filter(|(t, b)| (0..n_vocab).contains(t) && b.is_finite())
            .chain(eog_bans)
            .map(|(token, bias)| sys::llama_logit_bias { token, bias })
            .collect();
        if !bans.is_empty() {
            // SAFETY: `bans` is a valid array of `bans.len()` entries, copied by llama.
            let s = unsafe {
                sys::llama_sampler_init_logit_bias(n_vocab, bans.len() as i32, bans.as_ptr())
            };
            sampler.add(s, "logit bias")?;
        }
        let penalties = params.repeat_penalty != 1.0
            || params.frequency_penalty != 0.0
            || params.presence_penalty != 0.0;
        // SAFETY (all `init` calls below): plain constructors taking values; they return a new
        // sampler (or null), which `add` hands to the chain.
        if penalties {
            let s = unsafe {
                sys::llama_sampler_init_penalties(
                    model.n_vocab() as i32,
                    params.penalty_last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            };
            sampler.add(s, "penalties")?;
        }
        if params.temperature <= 0.0 {
            sampler.add(unsafe { sys::llama_sampler_init_greedy() }, "greedy")?;
            return Ok(sampler);
        }
        if params.top_k > 0 {
            sampler.add(
                unsafe { sys::llama_sampler_init_top_k(params.top_k) },
                "top_k",
            )?;
        }
        if params.top_p < 1.0 {
            sampler.add(
                unsafe { sys::llama_sampler_init_top_p(params.top_p, 1) },
                "top_p",
            )?;
        }
        if params.typical_p < 1.0 {
            sampler.add(
                unsafe { sys::llama_sampler_init_typical(params.typical_p, 1) },
                "typical_p",
            )?;
        }
        if params.min_p > 0.0 {
            sampler.add(
                unsafe { sys::llama_sampler_init_min_p(params.min_p, 1) },
                "min_p",
            )?;
        }
        sampler.add(
            unsafe { sys::llama_sampler_init_temp(params.temperature) },
            "temperature",
        )?;
        sampler.add(unsafe { sys::llama_sampler_init_dist(params.seed) }, "dist")?;
        Ok(sampler)
    }

    fn add(&self, s: *mut sys::llama_sampler, what: &str) -> Result<()> {
        if s.is_null() {
            return Err(LlamaError::Sampler(what.to_string()));
        }
        // SAFETY: both pointers are valid; the chain takes ownership of `s`.
        unsafe { sys::llama_sampler_chain_add(self.ptr.as_ptr(), s) };
        Ok(())
    }

    /// Samples a token from output row `idx` of the last decode (and records it for penalties
    /// and grammar).
    pub fn sample(&mut self, ctx: &Context<'_>, idx: i32) -> Token {
        // SAFETY: valid chain and context; llama reads the logits of row `idx`.
        unsafe { sys::llama_sampler_sample(self.ptr.as_ptr(), ctx.as_ptr(), idx) }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // SAFETY: we own the chain (and with it every sampler added to it).
        unsafe { sys::llama_sampler_free(self.ptr.as_ptr()) };
    }
}

/// Converts a JSON schema to a GBNF grammar with llama.cpp's own converter.
pub fn json_schema_to_grammar(schema_json: &str) -> Result<String> {
    let c = CString::new(schema_json)
        .map_err(|_| LlamaError::Sampler("schema contains a NUL byte".into()))?;
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: valid input string; on success `out` receives a malloc'd string we free below.
    let status = unsafe { sys::llama_rs_json_schema_to_grammar(c.as_ptr(), false, &mut out) };
    if status != sys::LLAMA_RS_STATUS_OK || out.is_null() {
        return Err(LlamaError::Sampler(
            "JSON schema could not be converted to a grammar".into(),
        ));
    }
    // SAFETY: `out` is a NUL-terminated string allocated by the wrapper; freed exactly once.
    let grammar = unsafe {
        let g = CStr::from_ptr(out).to_string_lossy().into_owned();
        sys::llama_rs_string_free(out);
        g
    };
    Ok(grammar)
}
