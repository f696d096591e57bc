//! Requests to the DMS stage on the demo model, shared by the DMS test binaries.

use std::io::Cursor;

use llama_dms::engine::{
    ContentPart, DmsReport, DmsSettings, EngineConfig, EngineHandle, Event, GenerateRequest,
    Message, Role,
};
use llama_dms::llama::SamplerParams;
use llama_dms::models::demo::DemoPaths;

pub fn engine(paths: &DemoPaths, cache_images: usize) -> EngineHandle {
    let mut config = EngineConfig::new(&paths.model, Some(paths.mmproj.clone()));
    config.runtime.context.n_ctx = 2048;
    config.runtime.context.n_threads = 2;
    config.signal_cache_images = cache_images;
    EngineHandle::start(config).unwrap()
}

/// A 64x64 image of `rgb` with Gaussian-like noise of deviation `sigma` (0..255 scale).
pub fn noisy_png(rgb: [u8; 3], sigma: f32, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_add(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    let img = image::RgbImage::from_fn(64, 64, |_, _| {
        let mut px = [0u8; 3];
        for (c, v) in px.iter_mut().enumerate() {
            let noise: f32 = (0..4).map(|_| next() - 0.5).sum::<f32>() * sigma * 1.73;
            *v = (f32::from(rgb[c]) + noise).clamp(0.0, 255.0) as u8;
        }
        image::Rgb(px)
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn request(image: Vec<u8>, text: &str, dms: DmsSettings) -> GenerateRequest {
    let content = vec![ContentPart::Image(image), ContentPart::Text(text.into())];
    let mut r = GenerateRequest::new(vec![Message {
        role: Role::User,
        content,
    }]);
    r.sampling = SamplerParams::greedy();
    r.max_tokens = 10;
    r.dms = dms;
    r
}

pub fn run(engine: &EngineHandle, r: GenerateRequest) -> (String, DmsReport) {
    let mut events = engine.submit(r).unwrap();
    let mut text = String::new();
    loop {
        match events.blocking_recv().unwrap() {
            Event::Text(t) => text.push_str(&t),
            Event::Done(d) => return (text, d.dms),
            Event::Error(e) => panic!("{e}"),
            Event::Logprob(_) => {}
        }
    }
}

pub const QUESTION: &str = "What is the main color of this image?";

pub fn hint(colour: &str) -> String {
    format!("This is a photo of something {colour}. {QUESTION}")
}
