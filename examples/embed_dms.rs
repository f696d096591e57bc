//! Embedding the DMS stage in another llama.cpp-based runtime.
//!
//! `llama_dms::dms` is pure: signals in, weights out, plus `scale_rows` for the embedding rows.
//! This example plays "another runtime" on the tiny synthesised model: it encodes an image with
//! the projector, measures confidence (and MC-dropout uncertainty) of the image-only and
//! text-only inputs itself, asks the rule scheduler for weights, scales the rows and decodes.
//!
//! Run: `cargo run --release --example embed_dms`

use llama_dms::dms::{
    apply_dropout, confidence, cosine_consistency, mean_pool, mutual_information, scale_rows,
    ModalitySignals, RuleScheduler, Scheduler, Signals, SplitMix64,
};
use llama_dms::llama::{
    Batch, Bitmap, ChunkKind, Context, ContextParams, Model, ModelParams, Mtmd, MtmdParams,
    PromptPart, TokenEmbeddings,
};

/// Decodes `rows` as one fresh sequence and returns the logits of the last row.
fn last_logits(ctx: &mut Context<'_>, rows: &[f32], width: usize) -> anyhow::Result<Vec<f32>> {
    ctx.clear_memory();
    let n = rows.len() / width;
    let mut batch = Batch::embeddings(n, width);
    for (i, row) in rows.chunks_exact(width).enumerate() {
        batch.push_row(row, i as i32, 0, i + 1 == n)?;
    }
    ctx.decode(&batch)?;
    Ok(ctx.logits(-1)?.to_vec())
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = llama_dms::models::tiny::write_tiny_models(dir.path(), 1)?;
    let model = Model::load(&paths.model, &ModelParams::default())?;
    let mtmd_params = MtmdParams::default();
    let mut mtmd = Mtmd::new(&model, &paths.mmproj, &mtmd_params)?;
    let mut ctx = Context::new(
        &model,
        &ContextParams {
            n_ctx: 512,
            ..ContextParams::default()
        },
    )?;
    let width = model.n_embd_inp();
    let table = TokenEmbeddings::open(&paths.model, model.n_embd(), model.token_row_scale())?;
    let text_rows = |text: &str, out: &mut Vec<f32>| -> anyhow::Result<()> {
        let tokens = model.tokenize(text, false, true)?;
        table.append_rows(&tokens, 1.0, width, out)?;
        Ok(())
    };

    // The runtime's own inputs: a red image and a question.
    let pixels: Vec<u8> = std::iter::repeat_n([220u8, 20, 20], 32 * 32)
        .flatten()
        .collect();
    let bitmap = Bitmap::from_rgb(32, 32, &pixels)?;
    let chunks = mtmd.tokenize(&[PromptPart::Image(&bitmap)])?;
    let image_chunk = chunks
        .iter()
        .find(|c| c.kind() == ChunkKind::Image)
        .expect("an image chunk");
    let mut image = mtmd.encode(&image_chunk)?;
    let mut question = Vec::new();
    text_rows("What colour is it?", &mut question)?;
    let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
    text_rows("<|im_start|>user\n", &mut prefix)?;
    text_rows("<|im_end|>\n<|im_start|>assistant\n", &mut suffix)?;

    // Signals: unimodal passes (clean + 3 dropout passes per modality).
    let mut rng = SplitMix64::new(7);
    let mut measure = |body: &[f32]| -> anyhow::Result<ModalitySignals> {
        let run = |ctx: &mut Context<'_>, b: &[f32]| {
            last_logits(ctx, &[&prefix[..], b, &suffix[..]].concat(), width)
        };
        let clean = run(&mut ctx, body)?;
        let mut samples = Vec::new();
        for _ in 0..3 {
            let mut noisy = body.to_vec();
            apply_dropout(&mut noisy, 0.1, &mut rng);
            samples.push(run(&mut ctx, &noisy)?);
        }
        Ok(ModalitySignals {
            confidence: confidence(&clean),
            uncertainty: mutual_information(&samples),
        })
    };
    let signals = Signals {
        images: vec![measure(&image)?],
        text: measure(&question)?,
        consistency: vec![cosine_consistency(
            &mean_pool(&image, width),
            &mean_pool(&question, width),
        )],
        image_missing: false,
        variants: Vec::new(),
    };

    // Weights from the scheduler, applied to the rows, then the joint decode.
    let weights = RuleScheduler::default().weights(&signals)?;
    scale_rows(&mut image, weights.images[0]);
    scale_rows(&mut question, weights.text);
    let logits = last_logits(&mut ctx, &[prefix, image, question, suffix].concat(), width)?;
    let best = (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap_or(0);
    println!("signals: {signals:?}");
    println!(
        "weights: image {:.3}, text {:.3}",
        weights.images[0], weights.text
    );
    println!(
        "most likely next token: {:?}",
        model.detokenize(&[best as i32])
    );
    Ok(())
}
