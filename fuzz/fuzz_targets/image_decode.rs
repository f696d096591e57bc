//! Coverage-guided fuzzing of the image decoder (`src/engine/image.rs`, compiled as is): any
//! bytes, any pixel limit; never a panic, never an image over the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/engine/image.rs"]
mod image_decoder;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the limit (1 .. 2^16 pixels), the rest is the file.
    let (limit, bytes) = match data {
        [a, b, rest @ ..] => (u64::from(u16::from_le_bytes([*a, *b])).max(1), rest),
        _ => return,
    };
    if let Ok(img) = image_decoder::decode_image(bytes, limit) {
        let px = u64::from(img.width) * u64::from(img.height);
        assert!(
            px > 0 && px <= limit,
            "{}x{} over {limit}",
            img.width,
            img.height
        );
        assert_eq!(img.pixels.len() as u64, px * 3);
    }
});
