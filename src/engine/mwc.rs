//! The Modality Weight Consistency loss of a request (DESIGN.md §3), measured on demand for
//! evaluation: how far the mean-pooled last-layer hidden state of the weighted joint pass lies
//! from those of the unimodal passes, each modality counted by its weight.

use super::dms_stage::UnimodalPrompts;
use super::lru::{content_key, ContentKey};
use super::passes::Unimodal;
use super::prompt::Prompt;
use super::runtime::Runtime;
use super::EngineError;
use crate::dms::{mwc_loss, ModalityWeights, Pooling};

impl Runtime<'_> {
    /// `L_mwc(weights)` of `prompt`: one clean pass per image alone, one of the text alone
    /// and one of the whole prompt under `weights` (images unpooled in all of them). The
    /// unimodal passes are kept for the next call on the same unimodal prompts.
    pub(super) fn mwc(
        &mut self,
        prompt: &Prompt,
        unimodal: &UnimodalPrompts,
        weights: &ModalityWeights,
    ) -> Result<f32, EngineError> {
        let key = unimodal_key(unimodal);
        let unimodal_z = match self.mwc_unimodal.take() {
            Some((k, z)) if k == key => z,
            _ => self.unimodal_hidden(unimodal)?,
        };
        let rows = self.encode_all(prompt)?;
        let joint = self
            .unimodal_rows(prompt, &rows, Pooling::NONE, Some(weights))?
            .ok_or_else(|| EngineError::Internal("a prompt without modality rows".into()))?;
        let fused = self.hidden_mean(&joint)?;
        let w: Vec<f32> = weights
            .images
            .iter()
            .copied()
            .chain([weights.text])
            .collect();
        let loss = mwc_loss(&w, &fused, &unimodal_z);
        self.mwc_unimodal = Some((key, unimodal_z));
        Ok(loss)
    }

    /// The mean hidden state of one clean pass per image alone and one of the text alone (empty
    /// without text), in that order.
    fn unimodal_hidden(
        &mut self,
        unimodal: &UnimodalPrompts,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut z = Vec::with_capacity(unimodal.images.len() + 1);
        for image_prompt in &unimodal.images {
            let rows = self.encode_all(image_prompt)?;
            let u = self
                .unimodal_rows(image_prompt, &rows, Pooling::NONE, None)?
                .ok_or_else(|| EngineError::Internal("image prompt without image rows".into()))?;
            z.push(self.hidden_mean(&u)?);
        }
        z.push(
            match self.unimodal_rows(&unimodal.text, &[], Pooling::NONE, None)? {
                Some(u) => self.hidden_mean(&u)?,
                None => Vec::new(),
            },
        );
        Ok(z)
    }

    /// The last logits of `prompt` decoded the way the signal passes decode it (every row an
    /// embedding row, images unpooled, at weights 1): what parity tests compare with llama.cpp's
    /// own evaluation, so that the passes' positions and attention are those of the model.
    pub fn signal_pass_logits(&mut self, prompt: &Prompt) -> Result<Vec<f32>, EngineError> {
        let rows = self.encode_all(prompt)?;
        let weights = ModalityWeights::uniform(prompt.n_images());
        let u = self
            .unimodal_rows(prompt, &rows, Pooling::NONE, Some(&weights))?
            .ok_or_else(|| EngineError::Internal("a prompt without modality rows".into()))?;
        let mut outputs = self.run_passes(&u, std::slice::from_ref(&u.body), false)?;
        outputs
            .pop()
            .map(|o| o.logits)
            .ok_or_else(|| EngineError::Internal("no pass".into()))
    }

    /// Mean last-layer hidden state over the modality rows of one clean pass of `u`.
    fn hidden_mean(&mut self, u: &Unimodal) -> Result<Vec<f32>, EngineError> {
        let outputs = self.run_passes(u, std::slice::from_ref(&u.body), false)?;
        outputs
            .into_iter()
            .next()
            .and_then(|o| o.hidden_mean)
            .ok_or_else(|| EngineError::Internal("the context gives no hidden states".into()))
    }
}

/// The identity of a request's unimodal prompts (what their hidden states depend on).
fn unimodal_key(unimodal: &UnimodalPrompts) -> ContentKey {
    let keys: Vec<ContentKey> = unimodal
        .images
        .iter()
        .chain([&unimodal.text])
        .map(Prompt::content_key)
        .collect();
    let parts: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    content_key(&parts)
}
