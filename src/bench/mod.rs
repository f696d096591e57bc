//! The benchmark harness behind `llama-dms bench`: time to first token, prefill and decode
//! speed, image encoding and the caches, measured in one run with the variants alternating so
//! that machine drift hits them all alike. Figures are medians with min/max; comparisons are
//! ratios of medians taken in the same run.

pub mod http;
pub mod report;

use std::io::Cursor;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::dms::SplitMix64;
use crate::engine::{
    ContentPart, DmsMode, DmsSettings, Done, EngineError, EngineHandle, Event, GenerateRequest,
    Message, Role,
};
use crate::models::colour::COLOURS;

/// Median, smallest and largest of a set of measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// The median (mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// How many values.
    pub n: usize,
}

impl Stat {
    /// The statistics of the finite `values` (`None` when there are none).
    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// `a / b` of two medians, when both exist and `b` is positive.
pub fn ratio(a: Option<Stat>, b: Option<Stat>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

/// A system prompt of about 150 tokens that starts with `nonce`, so no two requests with
/// different nonces share cached KV beyond the first few positions.
pub fn system_prompt(nonce: u64) -> String {
    format!(
        "Session {nonce:016x}. You are a careful assistant running on a local machine. \
         Answer in plain English, keep answers short and concrete, and say so when you are \
         not sure. When the user shows an image, describe what is in it before drawing any \
         conclusion, name colours with common words, and do not invent details that are not \
         visible. When the user asks a question without an image, answer from what you know \
         and keep to the question. Prefer one clear sentence to several vague ones, avoid \
         lists unless asked for one, and never repeat the question back. If the request is \
         ambiguous, pick the most likely meaning and answer it. Stay polite and friendly."
    )
}

/// The question of the text-only prompt.
pub const TEXT_QUESTION: &str = "Write a few sentences about lighthouses and why ships need them.";
/// The user text of a first image prompt: evidence (a hint), then the question, so that DMS
/// has something to weigh.
pub const IMAGE_QUESTION: &str = "A friend says it is red. What colour is the thing in this image?";
/// The user text about the same image again, in a new conversation: other evidence, the same
/// question (an image's signals are kept per image and question).
pub const REPEAT_QUESTION: &str =
    "My notes say it may be blue. What colour is the thing in this image?";

/// A 96x96 PNG of one of the demo's colours with per-pixel noise; `seed` picks both, so
/// every seed gives a different image (no cache can answer for it).
pub fn bench_image(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let base = COLOURS[(rng.next_u64() % COLOURS.len() as u64) as usize].rgb;
    let img = image::RgbImage::from_fn(96, 96, |_, _| {
        image::Rgb(base.map(|c| {
            let jitter = (rng.next_f32() - 0.5) * 24.0;
            (c * 255.0 + jitter).clamp(0.0, 255.0) as u8
        }))
    });
    let mut out = Cursor::new(Vec::new());
    // Encoding an in-memory RGB image to PNG cannot fail; an empty Vec would be rejected by
    // the engine with a clear error anyway.
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// A greedy chat request: `system`, then the user's image (if any) and `question`.
pub fn chat_request(
    system: &str,
    image: Option<&[u8]>,
    question: &str,
    dms: &DmsSettings,
    max_tokens: usize,
) -> GenerateRequest {
    let mut request = crate::eval::request(image.map(<[u8]>::to_vec), question, dms, max_tokens);
    request.messages.insert(
        0,
        Message {
            role: Role::System,
            content: vec![ContentPart::Text(system.into())],
        },
    );
    request
}

/// One request timed in process.
#[derive(Debug, Clone)]
pub struct Sample {
    /// From submission to the first generated text.
    pub ttft_ms: f64,
    /// From submission to the final report.
    pub total_ms: f64,
    /// The engine's final report (token counts, stage timings, DMS decisions).
    pub done: Box<Done>,
}

impl Sample {
    /// Prompt positions evaluated per second of prefill (reused positions not counted).
    pub fn prefill_tok_s(&self) -> f64 {
        let u = &self.done.usage;
        let evaluated = u.prompt_tokens.saturating_sub(u.cached_tokens);
        per_second(evaluated, self.done.timings.prefill_ms)
    }

    /// Generated tokens per second of generation.
    pub fn decode_tok_s(&self) -> f64 {
        per_second(
            self.done.usage.completion_tokens,
            self.done.timings.decode_ms,
        )
    }

    /// Vision encoder time, in the DMS stage and in the answer's prefill together.
    pub fn encode_ms(&self) -> f64 {
        self.done.timings.image_encode_ms + self.done.dms.timings_ms.encode_ms
    }
}

fn per_second(count: usize, ms: f64) -> f64 {
    if ms > 0.0 && count > 0 {
        count as f64 * 1000.0 / ms
    } else {
        f64::NAN
    }
}

/// Submits `request` and times it to the end.
pub fn timed(engine: &EngineHandle, request: GenerateRequest) -> Result<Sample, EngineError> {
    let start = Instant::now();
    let mut events = engine.submit(request)?;
    let mut first = None;
    loop {
        match events.blocking_recv() {
            Some(Event::Text(_)) => {
                first.get_or_insert_with(|| start.elapsed());
            }
            Some(Event::Logprob(_)) => {}
            Some(Event::Error(e)) => return Err(e),
            Some(Event::Done(done)) => {
                let total = start.elapsed();
                return Ok(Sample {
                    ttft_ms: first.unwrap_or(total).as_secs_f64() * 1000.0,
                    total_ms: total.as_secs_f64() * 1000.0,
                    done,
                });
            }
            None => return Err(EngineError::Internal("the engine stopped".into())),
        }
    }
}

/// The three requests measured for one mode in one repetition.
#[derive(Debug, Clone)]
pub struct ModeRound {
    /// Text-only prompt.
    pub text: Sample,
    /// A new image.
    pub image: Sample,
    /// The same image again with another question, in a new conversation.
    pub repeat: Sample,
}

/// Runs one round for `dms`: a text prompt, a new image and the same image again. `nonce`
/// makes the prompts (and the image) unlike any earlier round's.
pub fn mode_round(
    engine: &EngineHandle,
    dms: &DmsSettings,
    nonce: u64,
    max_tokens: usize,
) -> Result<ModeRound, EngineError> {
    let text = timed(
        engine,
        chat_request(&system_prompt(nonce), None, TEXT_QUESTION, dms, max_tokens),
    )?;
    let image = bench_image(nonce);
    let system = system_prompt(nonce ^ 0x1a6e);
    let first = timed(
        engine,
        chat_request(&system, Some(&image), IMAGE_QUESTION, dms, 8),
    )?;
    let repeat = timed(
        engine,
        chat_request(&system, Some(&image), REPEAT_QUESTION, dms, 8),
    )?;
    Ok(ModeRound {
        text,
        image: first,
        repeat,
    })
}

/// The figures of one DMS mode over all repetitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeFigures {
    /// Mode name (`off`, `rule`, `learned`).
    pub mode: String,
    /// Time to first token of the text-only prompt (ms).
    pub ttft_text_ms: Option<Stat>,
    /// Time to first token of a prompt with a new image (ms).
    pub ttft_image_ms: Option<Stat>,
    /// Time to first token with the same image again, new question, new conversation (ms).
    pub ttft_repeat_image_ms: Option<Stat>,
    /// Vision encoder time of a new image (ms).
    pub image_encode_ms: Option<Stat>,
    /// DMS stage time of a new image prompt (ms).
    pub dms_ms: Option<Stat>,
    /// Of that: the vision encoder (ms).
    #[serde(default)]
    pub dms_encode_ms: Option<Stat>,
    /// Of that: the image's signal passes (unimodal, continuation, dropout) (ms).
    #[serde(default)]
    pub dms_image_passes_ms: Option<Stat>,
    /// Of that: the text evidence's signal passes (ms).
    #[serde(default)]
    pub dms_text_passes_ms: Option<Stat>,
    /// Prefill speed of the text-only prompt (positions per second).
    pub prefill_tok_s: Option<Stat>,
    /// Decode speed of the text-only prompt (tokens per second).
    pub decode_tok_s: Option<Stat>,
    /// Whether every repeated image was found in a cache (KV, embeddings or DMS signals)
    /// instead of being encoded again.
    pub repeat_image_from_cache: bool,
}

impl ModeFigures {
    /// Summarises `rounds` of `mode`.
    pub fn of(mode: &str, rounds: &[ModeRound]) -> Self {
        let stat =
            |f: &dyn Fn(&ModeRound) -> f64| Stat::of(&rounds.iter().map(f).collect::<Vec<_>>());
        ModeFigures {
            mode: mode.into(),
            ttft_text_ms: stat(&|r| r.text.ttft_ms),
            ttft_image_ms: stat(&|r| r.image.ttft_ms),
            ttft_repeat_image_ms: stat(&|r| r.repeat.ttft_ms),
            image_encode_ms: stat(&|r| r.image.encode_ms()),
            dms_ms: stat(&|r| r.image.done.dms.timings_ms.total_ms),
            dms_encode_ms: stat(&|r| r.image.done.dms.timings_ms.encode_ms),
            dms_image_passes_ms: stat(&|r| r.image.done.dms.timings_ms.image_passes_ms),
            dms_text_passes_ms: stat(&|r| r.image.done.dms.timings_ms.text_passes_ms),
            prefill_tok_s: stat(&|r| r.text.prefill_tok_s()),
            decode_tok_s: stat(&|r| r.text.decode_tok_s()),
            repeat_image_from_cache: rounds.iter().all(|r| {
                let d = &r.repeat.done;
                let signals_cached = d.dms.mode == DmsMode::Off || d.dms.image_cache_hits > 0;
                d.timings.image_encode_ms == 0.0 && signals_cached
            }),
        }
    }
}

/// Peak resident memory of this process in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_median_and_skip_non_finite_values() {
        let s = Stat::of(&[3.0, 1.0, f64::NAN, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stat::of(&[4.0, 1.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[f64::INFINITY]).is_none());
        assert_eq!(ratio(Stat::of(&[3.0]), Stat::of(&[2.0])), Some(1.5));
        assert_eq!(ratio(Stat::of(&[3.0]), Stat::of(&[0.0])), None);
    }

    #[test]
    fn bench_images_and_prompts_differ_per_nonce() {
        assert_ne!(bench_image(1), bench_image(2));
        assert_eq!(bench_image(7), bench_image(7));
        assert!(image::load_from_memory(&bench_image(3)).is_ok());
        assert_ne!(system_prompt(1)[..30], system_prompt(2)[..30]);
    }
}
