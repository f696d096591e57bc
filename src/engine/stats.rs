//! Counters of what the engine has done since start, for `/metrics` and tests.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

use super::Done;

/// Upper bounds of the image-weight histogram buckets (the last bucket is unbounded).
pub const WEIGHT_BUCKETS: [f32; 7] = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0];

/// Counters updated by the worker and the handle (all relaxed atomics).
#[derive(Debug, Default)]
pub struct EngineStats {
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    queued: AtomicI64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    decode_us: AtomicU64,
    image_encode_us: AtomicU64,
    dms_us: AtomicU64,
    weight_buckets: [AtomicU64; WEIGHT_BUCKETS.len() + 1],
    weight_sum_milli: AtomicU64,
    max_batched: AtomicU64,
}

/// How a request ended, for [`EngineStats::finished`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished normally.
    Completed,
    /// Ended with an error.
    Failed,
    /// Its caller went away.
    Cancelled,
}

/// A snapshot of [`EngineStats`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsSnapshot {
    /// Requests that finished normally.
    pub completed: u64,
    /// Requests that ended with an error.
    pub failed: u64,
    /// Requests abandoned by their caller.
    pub cancelled: u64,
    /// Requests waiting in the queue.
    pub queue_depth: u64,
    /// Prompt tokens of finished requests.
    pub prompt_tokens: u64,
    /// Tokens generated over all requests.
    pub generated_tokens: u64,
    /// Seconds spent generating.
    pub decode_seconds: f64,
    /// Seconds spent in the vision encoder.
    pub image_encode_seconds: f64,
    /// Seconds spent in the DMS stage.
    pub dms_seconds: f64,
    /// Image weights applied, per bucket of [`WEIGHT_BUCKETS`] (non-cumulative; last = above).
    pub weight_buckets: Vec<u64>,
    /// Sum of all image weights applied.
    pub weight_sum: f64,
    /// Most requests decoded together in one step so far.
    pub max_batched: u64,
}

fn add(counter: &AtomicU64, v: u64) {
    counter.fetch_add(v, Ordering::Relaxed);
}

impl EngineStats {
    /// A request entered the queue.
    pub(super) fn enqueued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A request left the queue (taken by the worker).
    pub(super) fn dequeued(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// A decode step ran for `n` requests together.
    pub(super) fn batched(&self, n: usize) {
        self.max_batched.fetch_max(n as u64, Ordering::Relaxed);
    }

    /// A request ended; `generated` tokens were produced; `done` is its final report if any.
    pub(super) fn finished(&self, outcome: Outcome, generated: usize, done: Option<&Done>) {
        add(
            match outcome {
                Outcome::Completed => &self.completed,
                Outcome::Failed => &self.failed,
                Outcome::Cancelled => &self.cancelled,
            },
            1,
        );
        add(&self.generated_tokens, generated as u64);
        let Some(done) = done else { return };
        let us = |ms: f64| (ms * 1000.0).max(0.0) as u64;
        add(&self.prompt_tokens, done.usage.prompt_tokens as u64);
        add(&self.decode_us, us(done.timings.decode_ms));
        add(
            &self.image_encode_us,
            us(done.timings.image_encode_ms + done.dms.timings_ms.encode_ms),
        );
        add(&self.dms_us, us(done.dms.timings_ms.total_ms));
        for &w in &done.dms.weights.images {
            let bucket = WEIGHT_BUCKETS
                .iter()
                .position(|b| w <= *b)
                .unwrap_or(WEIGHT_BUCKETS.len());
            add(&self.weight_buckets[bucket], 1);
            add(
                &self.weight_sum_milli,
                (f64::from(w) * 1000.0).max(0.0) as u64,
            );
        }
    }

    /// The current counts.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let secs = |c: &AtomicU64| load(c) as f64 / 1e6;
        StatsSnapshot {
            completed: load(&self.completed),
            failed: load(&self.failed),
            cancelled: load(&self.cancelled),
            queue_depth: self.queued.load(Ordering::Relaxed).max(0) as u64,
            prompt_tokens: load(&self.prompt_tokens),
            generated_tokens: load(&self.generated_tokens),
            decode_seconds: secs(&self.decode_us),
            image_encode_seconds: secs(&self.image_encode_us),
            dms_seconds: secs(&self.dms_us),
            weight_buckets: self.weight_buckets.iter().map(load).collect(),
            weight_sum: load(&self.weight_sum_milli) as f64 / 1000.0,
            max_batched: load(&self.max_batched),
        }
    }
}
