//! The image decoder limits: `decode_image` never panics, never returns an image over the pixel
//! limit, refuses headers that claim more pixels than allowed before decoding anything, and
//! decodes valid images within the limit to their size.

use std::io::Cursor;
use std::time::{Duration, Instant};

use image::ImageFormat;
use llama_dms::engine::{decode_image, ImageError};
use proptest::prelude::*;

use crate::property;

const FORMATS: [ImageFormat; 5] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Gif,
    ImageFormat::WebP,
    ImageFormat::Bmp,
];

/// A deterministic picture of `w x h` encoded as `format`.
fn encode(format: ImageFormat, w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 13 + u32::from(seed)) as u8,
            (y * 7) as u8,
            ((x ^ y) * 5 + u32::from(seed)) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn format() -> impl Strategy<Value = ImageFormat> {
    prop::sample::select(FORMATS.to_vec())
}

/// Checks a decode result against the limit; `Ok` must be consistent and within it.
fn check(
    result: &Result<llama_dms::engine::RgbImage, ImageError>,
    limit: u64,
) -> Result<(), TestCaseError> {
    if let Ok(img) = result {
        let px = u64::from(img.width) * u64::from(img.height);
        prop_assert!(
            px > 0 && px <= limit,
            "{}x{} over limit {}",
            img.width,
            img.height,
            limit
        );
        prop_assert_eq!(img.pixels.len() as u64, px * 3);
    }
    Ok(())
}

/// Byte-level damage to an encoded image.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 1u8..).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<usize>(), prop::sample::select(vec![0u8, 0xff, 0x7f, 0x80, 1])).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<usize>(), 1usize..32).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len();
        if n == 0 {
            break;
        }
        match m {
            Mutation::Flip(i, b) => bytes[i % n] ^= b,
            Mutation::Set(i, b) => bytes[i % n] = *b,
            Mutation::Truncate(i) => bytes.truncate(i % n),
            Mutation::Insert(i, b) => {
                let at = i % (n + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Remove(i, k) => {
                let at = i % n;
                bytes.drain(at..(at + k).min(n));
            }
        }
    }
    bytes
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (!(crc & 1)).wrapping_add(1));
        }
    }
    !crc
}

/// Rewrites the dimensions in a valid encoding's header (clamped to what the format can say);
/// returns the dimensions written, or `None` when the header was not found.
fn claim(format: ImageFormat, bytes: &mut [u8], w: u32, h: u32) -> Option<(u32, u32)> {
    match format {
        ImageFormat::Png => {
            let (w, h) = (w.clamp(1, i32::MAX as u32), h.clamp(1, i32::MAX as u32));
            bytes[16..20].copy_from_slice(&w.to_be_bytes());
            bytes[20..24].copy_from_slice(&h.to_be_bytes());
            let crc = crc32(&bytes[12..29]);
            bytes[29..33].copy_from_slice(&crc.to_be_bytes());
            Some((w, h))
        }
        ImageFormat::Gif => {
            let (w, h) = (w.clamp(1, 65535), h.clamp(1, 65535));
            bytes[6..8].copy_from_slice(&(w as u16).to_le_bytes());
            bytes[8..10].copy_from_slice(&(h as u16).to_le_bytes());
            Some((w, h))
        }
        ImageFormat::Bmp => {
            let (w, h) = (w.clamp(1, i32::MAX as u32), h.clamp(1, i32::MAX as u32));
            bytes[18..22].copy_from_slice(&w.to_le_bytes());
            bytes[22..26].copy_from_slice(&h.to_le_bytes());
            Some((w, h))
        }
        ImageFormat::Jpeg => {
            let (w, h) = (w.clamp(1, 65535), h.clamp(1, 65535));
            let at = bytes.windows(2).position(|p| p == [0xFF, 0xC0])?;
            bytes[at + 5..at + 7].copy_from_slice(&(h as u16).to_be_bytes());
            bytes[at + 7..at + 9].copy_from_slice(&(w as u16).to_be_bytes());
            Some((w, h))
        }
        ImageFormat::WebP => {
            // Lossless: 0x2f, then 14 bits width-1 and 14 bits height-1 (little-endian bits).
            if &bytes[12..16] != b"VP8L" {
                return None;
            }
            let (w, h) = (w.clamp(1, 16384), h.clamp(1, 16384));
            let mut bits = u32::from_le_bytes([bytes[21], bytes[22], bytes[23], bytes[24]]);
            bits = (bits & !0x0FFF_FFFF) | (w - 1) | ((h - 1) << 14);
            bytes[21..25].copy_from_slice(&bits.to_le_bytes());
            Some((w, h))
        }
        _ => None,
    }
}

#[test]
fn image_valid_sizes_decode_exactly() {
    let strategy = (format(), 1u32..48, 1u32..48, any::<u8>(), 1u64..3000);
    property(
        "image_valid_sizes_decode_exactly",
        1000,
        strategy,
        |(f, w, h, seed, limit)| {
            let bytes = encode(f, w, h, seed);
            let result = decode_image(&bytes, limit);
            check(&result, limit)?;
            if u64::from(w * h) <= limit {
                let img = result.map_err(|e| TestCaseError::fail(format!("{f:?} {w}x{h}: {e}")))?;
                prop_assert_eq!((img.width, img.height), (w, h));
            } else {
                prop_assert!(
                    matches!(result, Err(ImageError::TooLarge { width, height, .. }) if (width, height) == (w, h)),
                    "{:?} {}x{} over {}: {:?}",
                    f,
                    w,
                    h,
                    limit,
                    result.map(|i| (i.width, i.height))
                );
            }
            Ok(())
        },
    );
}

#[test]
fn image_mutated_bytes_never_panic_or_exceed_the_limit() {
    let strategy = (
        format(),
        1u32..24,
        1u32..24,
        prop::collection::vec(mutation(), 1..6),
        1u64..1000,
    );
    property(
        "image_mutated_bytes",
        2000,
        strategy,
        |(f, w, h, muts, limit)| {
            let bytes = mutate(encode(f, w, h, 3), &muts);
            check(&decode_image(&bytes, limit), limit)
        },
    );
}

#[test]
fn image_arbitrary_bytes_never_panic() {
    let magic = prop::sample::select(vec![
        b"".to_vec(),
        b"\x89PNG\r\n\x1a\n".to_vec(),
        b"\xff\xd8\xff".to_vec(),
        b"GIF89a".to_vec(),
        b"GIF87a".to_vec(),
        b"RIFF\0\0\0\0WEBPVP8L".to_vec(),
        b"RIFF\0\0\0\0WEBPVP8X".to_vec(),
        b"BM".to_vec(),
        b"II*\0".to_vec(),
    ]);
    let strategy = (
        magic,
        prop::collection::vec(any::<u8>(), 0..200),
        1u64..1_000_000,
    );
    property(
        "image_arbitrary_bytes",
        3000,
        strategy,
        |(magic, tail, limit)| {
            let bytes: Vec<u8> = magic.into_iter().chain(tail).collect();
            check(&decode_image(&bytes, limit), limit)
        },
    );
}

#[test]
fn image_huge_header_claims_are_refused_quickly() {
    let dim = prop_oneof![
        1u32..100,
        100u32..70_000,
        Just(65_535),
        Just(16_384),
        Just(u32::MAX)
    ];
    let strategy = (format(), dim.clone(), dim, 1u64..(1 << 24));
    property(
        "image_huge_header_claims",
        1000,
        strategy,
        |(f, w, h, limit)| {
            let mut bytes = encode(f, 4, 3, 9);
            let Some((w, h)) = claim(f, &mut bytes, w, h) else {
                return Err(TestCaseError::fail(format!("no {f:?} header to patch")));
            };
            let start = Instant::now();
            let result = decode_image(&bytes, limit);
            let took = start.elapsed();
            check(&result, limit)?;
            if u64::from(w) * u64::from(h) > limit {
                prop_assert!(result.is_err(), "{:?} claims {}x{} over {}", f, w, h, limit);
            }
            // A claim over the limit is refused from the header, before any pixel buffer exists.
            prop_assert!(
                took < Duration::from_secs(2),
                "{:?} {}x{} took {:?}",
                f,
                w,
                h,
                took
            );
            Ok(())
        },
    );
}

/// Pinned cases: headers claiming far more than the limit fail from the header.
#[test]
fn image_pinned_bombs() {
    for (f, w, h) in [
        (ImageFormat::Gif, 65_535, 65_535),
        (ImageFormat::Png, i32::MAX as u32, i32::MAX as u32),
        (ImageFormat::Jpeg, 65_535, 65_535),
        (ImageFormat::WebP, 16_000, 16_000),
        (ImageFormat::Bmp, 1 << 20, 1 << 20),
    ] {
        let mut bytes = encode(f, 4, 3, 1);
        let (w, h) = claim(f, &mut bytes, w, h).expect("header");
        match decode_image(&bytes, 4096 * 4096) {
            Err(ImageError::TooLarge { width, height, .. }) => assert_eq!((width, height), (w, h)),
            // The png and bmp decoders refuse such headers themselves (their own limits).
            Err(ImageError::Corrupt(m))
                if matches!(f, ImageFormat::Png | ImageFormat::Bmp) && m.contains("limit") => {}
            other => panic!("{f:?}: {:?}", other.map(|i| (i.width, i.height))),
        }
    }
}
