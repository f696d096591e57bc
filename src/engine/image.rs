//! Turning encoded image bytes (PNG, JPEG, WebP, GIF first frame, BMP) into RGB pixels, with a
//! pixel limit checked from the header before anything is decoded.

use std::io::Cursor;

use image::{ImageFormat, ImageReader};

/// A decoded RGB8 image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Tightly packed RGB bytes, row-major.
    pub pixels: Vec<u8>,
}

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The bytes are not in a supported image format.
    #[error("not a supported image (PNG, JPEG, WebP, GIF or BMP)")]
    UnknownFormat,
    /// The header claims more pixels than allowed (decompression-bomb guard).
    #[error("image is {width}x{height} pixels, more than the limit of {limit} pixels")]
    TooLarge { width: u32, height: u32, limit: u64 },
    /// The file is damaged or truncated.
    #[error("image could not be decoded: {0}")]
    Corrupt(String),
}

/// Decodes `bytes` into RGB, refusing images with more than `max_pixels` pixels.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    match reader.format() {
        Some(
            ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp,
        ) => {}
        _ => return Err(ImageError::UnknownFormat),
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt("image has no pixels".into()));
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit: max_pixels,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let rgb = decoded.into_rgb8();
    Ok(RgbImage {
        width: rgb.width(),
        height: rgb.height(),
        pixels: rgb.into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(width, height, image::Rgb([200, 10, 10]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png_to_rgb() {
        let img = decode_image(&png(3, 2), 100).unwrap();
        assert_eq!((img.width, img.height, img.pixels.len()), (3, 2, 18));
        assert_eq!(&img.pixels[..3], &[200, 10, 10]);
    }

    #[test]
    fn refuses_non_images_truncation_and_oversize() {
        assert_eq!(
            decode_image(b"hello world", 100),
            Err(ImageError::UnknownFormat)
        );
        let bytes = png(16, 16);
        assert!(matches!(
            decode_image(&bytes[..bytes.len() / 2], 1000),
            Err(ImageError::Corrupt(_))
        ));
        assert!(matches!(
            decode_image(&bytes, 100),
            Err(ImageError::TooLarge { .. })
        ));
    }
}
