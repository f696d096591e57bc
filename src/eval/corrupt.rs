//! Image corruptions applied on the fly: Gaussian noise, blur and occlusion, all seeded.

use crate::dms::SplitMix64;

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut SplitMix64) -> f32 {
    let u1 = rng.next_f32().max(f32::MIN_POSITIVE);
    let u2 = rng.next_f32();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Adds Gaussian noise of deviation `sigma` (in units of the full 0..255 range) to every channel.
pub fn add_noise(img: &mut image::RgbImage, sigma: f32, rng: &mut SplitMix64) {
    for v in img.iter_mut() {
        *v = (f32::from(*v) + normal(rng) * sigma * 255.0).clamp(0.0, 255.0) as u8;
    }
}

/// Gaussian blur of `radius` pixels (the deviation of the kernel).
pub fn blur(img: &image::RgbImage, radius: f32) -> image::RgbImage {
    image::imageops::blur(img, radius)
}

/// Blacks out `fraction` of the patches of an 8x8 grid, chosen at random.
pub fn occlude(img: &mut image::RgbImage, fraction: f32, rng: &mut SplitMix64) {
    let (w, h) = img.dimensions();
    let (cw, ch) = (w.div_ceil(8), h.div_ceil(8));
    let mut cells: Vec<(u32, u32)> = (0..8).flat_map(|y| (0..8).map(move |x| (x, y))).collect();
    // Fisher-Yates, then take the first cells.
    for i in (1..cells.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        cells.swap(i, j);
    }
    let n = ((fraction.clamp(0.0, 1.0) * 64.0).round() as usize).min(64);
    for &(cx, cy) in &cells[..n] {
        for y in cy * ch..((cy + 1) * ch).min(h) {
            for x in cx * cw..((cx + 1) * cw).min(w) {
                img.put_pixel(x, y, image::Rgb([0, 0, 0]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey() -> image::RgbImage {
        image::RgbImage::from_pixel(32, 32, image::Rgb([128, 128, 128]))
    }

    #[test]
    fn noise_strength_grows_with_sigma_and_is_seeded() {
        let spread = |sigma: f32| {
            let mut img = grey();
            add_noise(&mut img, sigma, &mut SplitMix64::new(1));
            img.iter()
                .map(|&v| (f32::from(v) - 128.0).abs())
                .sum::<f32>()
                / img.len() as f32
        };
        assert_eq!(spread(0.0), 0.0);
        assert!(spread(0.1) < spread(0.5));
        let (mut a, mut b) = (grey(), grey());
        add_noise(&mut a, 0.3, &mut SplitMix64::new(5));
        add_noise(&mut b, 0.3, &mut SplitMix64::new(5));
        assert_eq!(a, b);
    }

    #[test]
    fn occlusion_blacks_out_the_requested_share() {
        let mut img = grey();
        occlude(&mut img, 0.5, &mut SplitMix64::new(2));
        let black = img.pixels().filter(|p| p.0 == [0, 0, 0]).count();
        assert_eq!(black, 32 * 32 / 2);
    }
}
