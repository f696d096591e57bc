//! The metadata every LLaVA-style (`clip` arch, `mlp` projector) mmproj we synthesise shares.

use super::gguf_writer::GgufWriter;

/// Shape and preprocessing of a LLaVA `mlp` projector.
#[derive(Debug, Clone)]
pub struct ClipSpec {
    /// `general.name`.
    pub name: &'static str,
    /// `general.description`.
    pub description: &'static str,
    /// `general.file_type` (0 = all F32, 1 = mostly F16).
    pub file_type: u32,
    /// Input image side in pixels (images are resized to it).
    pub image_size: usize,
    /// Patch side in pixels; `(image_size / patch_size)^2` image tokens.
    pub patch_size: usize,
    /// Vision tower width.
    pub v_embd: usize,
    /// Vision tower feed-forward width.
    pub v_ff: usize,
    /// Vision tower blocks (the LLaVA graph runs all but the last).
    pub n_layer: usize,
    /// Attention heads of the vision tower.
    pub n_head: usize,
    /// Output width (must equal the text model's `n_embd`).
    pub n_embd_out: usize,
    /// Per-channel pixel mean after scaling to [0, 1].
    pub image_mean: [f32; 3],
    /// Per-channel pixel standard deviation.
    pub image_std: [f32; 3],
}

impl ClipSpec {
    /// Image tokens per image.
    pub fn n_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Writes the `general.*` and `clip.*` keys.
    pub fn write_keys(&self, w: &mut GgufWriter) {
        let u = |n: usize| u32::try_from(n).expect("dimension fits in u32");
        w.add_string("general.architecture", "clip");
        w.add_string("general.name", self.name);
        w.add_string("general.description", self.description);
        w.add_u32("general.file_type", self.file_type);
        w.add_bool("clip.has_vision_encoder", true);
        w.add_bool("clip.has_llava_projector", true);
        w.add_string("clip.projector_type", "mlp");
        w.add_u32("clip.vision.image_size", u(self.image_size));
        w.add_u32("clip.vision.patch_size", u(self.patch_size));
        w.add_u32("clip.vision.embedding_length", u(self.v_embd));
        w.add_u32("clip.vision.feed_forward_length", u(self.v_ff));
        w.add_u32("clip.vision.projection_dim", u(self.n_embd_out));
        w.add_u32("clip.vision.block_count", u(self.n_layer));
        w.add_u32("clip.vision.attention.head_count", u(self.n_head));
        w.add_f32("clip.vision.attention.layer_norm_epsilon", 1e-5);
        w.add_f32_array("clip.vision.image_mean", &self.image_mean);
        w.add_f32_array("clip.vision.image_std", &self.image_std);
        w.add_bool("clip.use_gelu", true);
    }
}
