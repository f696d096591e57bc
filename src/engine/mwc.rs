//! The Modality Weight Consistency loss of a request (DESIGN.md §3), measured on demand for
//! evaluation: how far the mean-pooled last-layer hidden state of the weighted joint pass lies
//! from those of the unimodal passes, each modality counted by its weight.

use super::dms_stage::UnimodalPrompts;
use super::passes::Unimodal;
use super::prompt::Prompt;
use super::runtime::Runtime;
use super::EngineError;
use crate::dms::{mwc_loss, ModalityWeights, Pooling};

impl Runtime<'_> {
    /// `L_mwc(weights)` of `prompt`: one clean pass per image alone, one of the text alone
    /// and one of the whole prompt under `weights` (images unpooled in all of them).
    pub(super) fn mwc(
        &mut self,
        prompt: &Prompt,
        unimodal: &UnimodalPrompts,
        weights: &ModalityWeights,
    ) -> Result<f32, EngineError> {
        let mut unimodal_z = Vec::with_capacity(unimodal.images.len() + 1);
        for image_prompt in &unimodal.images {
            let rows = self.encode_all(image_prompt)?;
            let u = self
                .unimodal_rows(image_prompt, &rows, Pooling::NONE, None)?
                .ok_or_else(|| EngineError::Internal("image prompt without image rows".into()))?;
            unimodal_z.push(self.hidden_mean(&u)?);
        }
        unimodal_z.push(
            match self.unimodal_rows(&unimodal.text, &[], Pooling::NONE, None)? {
                Some(u) => self.hidden_mean(&u)?,
                None => Vec::new(),
            },
        );
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
        Ok(mwc_loss(&w, &fused, &unimodal_z))
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
