//! Raw HTTP/1.1 over `TcpStream` (so that bodies no client would send can be sent), and the
//! hostile images, built in the test.

use std::io::{Cursor, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

/// One answer read off the wire.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Lower-cased header lines.
    pub headers: String,
    /// The body parsed as JSON (`Value::String` holding the raw text when it is not JSON).
    pub body: Value,
    /// How long the answer took.
    pub elapsed: Duration,
}

/// What to write to the socket.
#[derive(Debug, Clone)]
pub struct Wire {
    /// The exact bytes (request line, headers, body).
    pub bytes: Vec<u8>,
    /// Close our writing half after sending (a client that gives up on its body).
    pub half_close: bool,
}

/// A request with the given headers (each `Name: value`, as bytes) and body; `length`
/// overrides the `Content-Length` header (a lie) when set.
pub fn request(
    method: &str,
    path: &str,
    headers: &[Vec<u8>],
    body: &[u8],
    length: Option<usize>,
) -> Wire {
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        length.unwrap_or(body.len())
    )
    .into_bytes();
    for h in headers {
        bytes.extend_from_slice(h);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    Wire {
        bytes,
        half_close: false,
    }
}

/// A POST with a truthful `Content-Length`.
pub fn post(path: &str, body: impl AsRef<[u8]>) -> Wire {
    request("POST", path, &[], body.as_ref(), None)
}

/// A GET with optional extra headers.
pub fn get(path: &str, headers: &[Vec<u8>]) -> Wire {
    request("GET", path, headers, b"", None)
}

/// Sends `wire` and reads the answer until the server closes the connection; an error when
/// nothing complete arrives within `limit` (a hang).
pub fn exchange(port: u16, wire: &Wire, limit: Duration) -> Result<Reply, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    // A server that answers before reading a whole (over-limit) body may reset the
    // connection while we write: read the answer anyway.
    let _ = s.write_all(&wire.bytes);
    if wire.half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if start.elapsed() > limit {
            return Err(format!("no complete answer within {limit:?}"));
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Err(format!("read: {e}")),
            Err(_) => break, // reset after the answer
        }
    }
    parse(&raw, start.elapsed())
}

fn parse(raw: &[u8], elapsed: Duration) -> Result<Reply, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok(Reply {
        status,
        headers: head,
        body,
        elapsed,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
    out
}

/// `data:<mime>;base64,<bytes>`.
pub fn data_uri(bytes: &[u8], mime: &str) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// CRC-32 (PNG's), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose IHDR (with a correct CRC) claims `width` x `height`, followed by a tiny
/// IDAT and IEND: a decompression bomb's header.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut typed = kind.to_vec();
        typed.extend_from_slice(data);
        out.extend_from_slice(&typed);
        out.extend_from_slice(&crc32(&typed).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

fn encode(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// A noisy RGB image (so that compressed streams are long enough to cut).
fn noisy(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let v = (x * 31 + y * 17 + x * y * 7) as u8;
        image::Rgb([v, v.wrapping_mul(3), v ^ 0x5a])
    })
}

/// A real PNG.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    encode(&noisy(width, height), image::ImageFormat::Png)
}

/// A real JPEG.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode(&noisy(width, height), image::ImageFormat::Jpeg)
}

/// A JPEG whose SOF0 header claims `width` x `height`.
pub fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = jpeg(16, 16);
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xff, 0xc0])
        .expect("baseline JPEG has SOF0");
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

/// A GIF whose logical screen and frame claim 65535 x 65535.
pub fn gif_claiming_huge() -> Vec<u8> {
    let mut bytes = animated_gif(1);
    bytes[6..10].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    if let Some(desc) = bytes.iter().position(|&b| b == 0x2c) {
        bytes[desc + 5..desc + 9].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    }
    bytes
}

/// An animated GIF with `frames` 8x8 frames of different colours.
pub fn animated_gif(frames: u8) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
        encoder
            .set_repeat(image::codecs::gif::Repeat::Infinite)
            .expect("repeat");
        let frames = (0..frames).map(|i| {
            let colour = if i % 2 == 0 {
                [255, 0, 0, 255]
            } else {
                [0, 0, 255, 255]
            };
            image::Frame::new(image::RgbaImage::from_pixel(8, 8, image::Rgba(colour)))
        });
        encoder.encode_frames(frames).expect("encode gif");
    }
    out
}
