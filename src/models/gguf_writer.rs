//! A small writer for GGUF version 3 files (the format llama.cpp loads).
//!
//! Layout written, all little endian: the magic `GGUF`, version 3, the tensor and key/value
//! counts, the key/value pairs in insertion order, the tensor infos in insertion order, padding
//! to [`ALIGNMENT`], then each tensor's data padded to [`ALIGNMENT`]. Only `F32` and `F16`
//! tensors are supported, which is all the synthetic test models need.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Byte alignment of the data section and of every tensor in it (GGUF's default, so the
/// `general.alignment` key is not written).
pub const ALIGNMENT: usize = 32;

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;

// GGUF value type codes.
const T_UINT32: u32 = 4;
const T_INT32: u32 = 5;
const T_FLOAT32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_UINT64: u32 = 10;

// ggml tensor type codes.
const GGML_TYPE_F32: u32 = 0;
const GGML_TYPE_F16: u32 = 1;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    F32Array(Vec<f32>),
    I32Array(Vec<i32>),
}

/// Tensor elements as stored in the file.
#[derive(Debug, Clone)]
enum TensorData {
    F32(Vec<f32>),
    /// IEEE half-precision bit patterns.
    F16(Vec<u16>),
}

impl TensorData {
    fn ggml_type(&self) -> u32 {
        match self {
            TensorData::F32(_) => GGML_TYPE_F32,
            TensorData::F16(_) => GGML_TYPE_F16,
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len() * 4,
            TensorData::F16(v) => v.len() * 2,
        }
    }
}

#[derive(Debug, Clone)]
struct Tensor {
    name: String,
    shape: Vec<usize>,
    data: TensorData,
}

/// Collects metadata and tensors in memory, then writes them as one GGUF v3 file.
///
/// Keys and tensors are written in the order they were first added; adding a key again
/// replaces its value in place.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    kvs: Vec<(String, Value)>,
    tensors: Vec<Tensor>,
}

impl GgufWriter {
    /// Creates an empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, key: &str, value: Value) {
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.kvs.push((key.to_owned(), value)),
        }
    }

    /// Sets a `u32` value.
    pub fn add_u32(&mut self, key: &str, v: u32) {
        self.add(key, Value::U32(v));
    }

    /// Sets an `i32` value.
    pub fn add_i32(&mut self, key: &str, v: i32) {
        self.add(key, Value::I32(v));
    }

    /// Sets a `u64` value.
    pub fn add_u64(&mut self, key: &str, v: u64) {
        self.add(key, Value::U64(v));
    }

    /// Sets an `f32` value.
    pub fn add_f32(&mut self, key: &str, v: f32) {
        self.add(key, Value::F32(v));
    }

    /// Sets a boolean value.
    pub fn add_bool(&mut self, key: &str, v: bool) {
        self.add(key, Value::Bool(v));
    }

    /// Sets a UTF-8 string value.
    pub fn add_string(&mut self, key: &str, v: &str) {
        self.add(key, Value::Str(v.to_owned()));
    }

    /// Sets an array-of-strings value.
    pub fn add_string_array(&mut self, key: &str, v: &[String]) {
        self.add(key, Value::StrArray(v.to_vec()));
    }

    /// Sets an array-of-`f32` value.
    pub fn add_f32_array(&mut self, key: &str, v: &[f32]) {
        self.add(key, Value::F32Array(v.to_vec()));
    }

    /// Sets an array-of-`i32` value.
    pub fn add_i32_array(&mut self, key: &str, v: &[i32]) {
        self.add(key, Value::I32Array(v.to_vec()));
    }

    fn add_tensor(&mut self, name: &str, shape: &[usize], data: TensorData, n: usize) {
        let expected: usize = shape.iter().product();
        assert!(
            !shape.is_empty() && shape.len() <= 4,
            "tensor {name}: ggml tensors have 1 to 4 dimensions, got {}",
            shape.len()
        );
        assert_eq!(
            n, expected,
            "tensor {name}: {n} elements for shape {shape:?}"
        );
        assert!(
            self.tensors.iter().all(|t| t.name != name),
            "tensor {name} added twice"
        );
        self.tensors.push(Tensor {
            name: name.to_owned(),
            shape: shape.to_vec(),
            data,
        });
    }

    /// Adds an `F32` tensor. `shape` is in ggml order: `shape[0]` is the innermost dimension
    /// (the row length), and `data` is laid out row-major in that order.
    ///
    /// # Panics
    /// If `data.len()` differs from the product of `shape`, if `shape` has no or more than four
    /// dimensions, or if a tensor of that name was already added.
    pub fn add_tensor_f32(&mut self, name: &str, shape: &[usize], data: Vec<f32>) {
        let n = data.len();
        self.add_tensor(name, shape, TensorData::F32(data), n);
    }

    /// Adds an `F16` tensor, converting `data` from `f32` (round to nearest even).
    /// `shape` is in ggml order as for [`GgufWriter::add_tensor_f32`].
    ///
    /// # Panics
    /// As [`GgufWriter::add_tensor_f32`].
    pub fn add_tensor_f16(&mut self, name: &str, shape: &[usize], data: &[f32]) {
        let bits = data.iter().map(|&x| f32_to_f16_bits(x)).collect();
        self.add_tensor(name, shape, TensorData::F16(bits), data.len());
    }

    /// Serialises the whole file into memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, VERSION);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.kvs.len() as u64);

        for (key, value) in &self.kvs {
            put_str(&mut out, key);
            put_value(&mut out, value);
        }

        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.shape.len() as u32);
            for &d in &t.shape {
                put_u64(&mut out, d as u64);
            }
            put_u32(&mut out, t.data.ggml_type());
            put_u64(&mut out, offset as u64);
            offset += align(t.data.byte_len());
        }

        out.resize(align(out.len()), 0);
        for t in &self.tensors {
            match &t.data {
                TensorData::F32(v) => v.iter().for_each(|x| put_bytes(&mut out, x.to_le_bytes())),
                TensorData::F16(v) => v.iter().for_each(|x| put_bytes(&mut out, x.to_le_bytes())),
            }
            out.resize(align(out.len()), 0);
        }
        out
    }

    /// Writes the file to `path`. The bytes go to a temporary file beside it that is then
    /// renamed over `path`, so a concurrent reader never sees a half-written model.
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let file_name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name", path.display()),
            )
        })?;
        let mut tmp_name = file_name.to_os_string();
        tmp_name.push(format!(
            ".tmp.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = path.with_file_name(tmp_name);

        let result = write_then_rename(&self.to_bytes(), &tmp, path);
        if result.is_err() {
            // Best effort: the original error is the one worth reporting.
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn write_then_rename(bytes: &[u8], tmp: &Path, path: &Path) -> io::Result<()> {
    let mut file = fs::File::create(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(tmp, path)
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

fn put_bytes<const N: usize>(out: &mut Vec<u8>, bytes: [u8; N]) {
    out.extend_from_slice(&bytes);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_array_header(out: &mut Vec<u8>, elem_type: u32, len: usize) {
    put_u32(out, T_ARRAY);
    put_u32(out, elem_type);
    put_u64(out, len as u64);
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U32(v) => {
            put_u32(out, T_UINT32);
            put_u32(out, *v);
        }
        Value::I32(v) => {
            put_u32(out, T_INT32);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::U64(v) => {
            put_u32(out, T_UINT64);
            put_u64(out, *v);
        }
        Value::F32(v) => {
            put_u32(out, T_FLOAT32);
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::Bool(v) => {
            put_u32(out, T_BOOL);
            out.push(u8::from(*v));
        }
        Value::Str(s) => {
            put_u32(out, T_STRING);
            put_str(out, s);
        }
        Value::StrArray(v) => {
            put_array_header(out, T_STRING, v.len());
            v.iter().for_each(|s| put_str(out, s));
        }
        Value::F32Array(v) => {
            put_array_header(out, T_FLOAT32, v.len());
            v.iter().for_each(|x| put_bytes(out, x.to_le_bytes()));
        }
        Value::I32Array(v) => {
            put_array_header(out, T_INT32, v.len());
            v.iter().for_each(|x| put_bytes(out, x.to_le_bytes()));
        }
    }
}

/// Converts an `f32` to IEEE 754 half-precision bits, rounding to nearest, ties to even.
/// Values too large become infinity; NaN stays NaN.
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x007f_ffff;

    if exp == 0xff {
        // Infinity or NaN (keep a quiet-NaN payload bit).
        let nan = if man != 0 { 0x0200 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    // Re-bias the exponent from 127 to 15.
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Subnormal half (or zero): shift the mantissa, with its implicit bit, into place.
        if e < -10 {
            return sign;
        }
        let m = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        let round = rem > halfway || (rem == halfway && half & 1 == 1);
        return sign | (half + u32::from(round)) as u16;
    }
    let half = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    let round = rem > 0x1000 || (rem == 0x1000 && half & 1 == 1);
    // A carry out of the mantissa correctly bumps the exponent (up to infinity).
    sign | (half + u32::from(round)) as u16
}

/// Converts IEEE 754 half-precision bits to `f32` (exact).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x03ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = man * 2^-24, exactly representable in f32.
            let v = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::super::gguf_test_reader::{parse, Val};
    use super::*;

    #[test]
    fn round_trips_metadata_and_tensors() {
        let mut w = GgufWriter::new();
        w.add_string("general.architecture", "llama");
        w.add_u32("a.u32", 7);
        w.add_i32("a.i32", -3);
        w.add_u64("a.u64", 1 << 40);
        w.add_f32("a.f32", 0.25);
        w.add_bool("a.bool", true);
        w.add_string_array("a.strs", &["x".to_owned(), "Ġyz".to_owned()]);
        w.add_f32_array("a.f32s", &[1.0, -2.5]);
        w.add_i32_array("a.i32s", &[1, 3, -1]);
        w.add_u32("a.u32", 8); // replaces in place
        w.add_tensor_f32("t.a", &[3, 2], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        w.add_tensor_f16("t.b", &[5], &[0.5, -1.0, 2.0, 65504.0, 1e-7]);
        w.add_tensor_f32("t.c", &[1], vec![9.0]);

        let p = parse(&w.to_bytes());
        assert_eq!(p.kv_order.len(), 9);
        assert_eq!(p.kv_order[1], "a.u32");
        assert_eq!(p.u32("a.u32"), 8);
        assert_eq!(p.kvs["a.i32"], Val::I32(-3));
        assert_eq!(p.kvs["a.u64"], Val::U64(1 << 40));
        assert_eq!(p.kvs["a.f32"], Val::F32(0.25));
        assert_eq!(p.kvs["a.bool"], Val::Bool(true));
        assert_eq!(p.strings("a.strs"), vec!["x", "Ġyz"]);
        assert_eq!(
            p.kvs["a.i32s"],
            Val::Arr(vec![Val::I32(1), Val::I32(3), Val::I32(-1)])
        );
        assert_eq!(p.tensor_order, vec!["t.a", "t.b", "t.c"]);
        assert_eq!(p.tensors["t.a"].shape, vec![3, 2]);
        assert_eq!(p.tensors["t.b"].ggml_type, 1);
        assert_eq!(p.tensors["t.b"].offset, 32);
        assert_eq!(p.tensors["t.c"].offset, 64);
        assert_eq!(p.f32s("t.a"), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let b = p.f32s("t.b");
        assert_eq!(&b[..4], &[0.5, -1.0, 2.0, 65504.0]);
        assert!((b[4] - 1e-7).abs() < 3e-8);
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        let cases: &[(f32, u16)] = &[
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (0.1, 0x2e66),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00), // rounds up to infinity
            (1e9, 0x7c00),
            (f32::INFINITY, 0x7c00),
            (5.960_464_5e-8, 0x0001), // smallest subnormal
            (2.0e-8, 0x0000),
            (6.097_555e-5, 0x03ff),   // largest subnormal
            (6.103_515_6e-5, 0x0400), // smallest normal
            (1.000_488_3, 0x3c00),    // exactly halfway to 0x3c01: ties to even
            (1.001_464_8, 0x3c02),    // halfway between 0x3c01 and 0x3c02: ties to even
        ];
        for &(x, h) in cases {
            assert_eq!(f32_to_f16_bits(x), h, "{x}");
        }
        assert!(f16_bits_to_f32(f32_to_f16_bits(f32::NAN)).is_nan());
        // Every finite half survives a round trip through f32.
        for h in 0..=u16::MAX {
            let x = f16_bits_to_f32(h);
            if x.is_finite() {
                assert_eq!(f32_to_f16_bits(x), h, "{h:#06x}");
            }
        }
    }

    #[test]
    fn write_to_creates_the_file() {
        let dir = std::env::temp_dir().join(format!("gguf-writer-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.gguf");
        let mut w = GgufWriter::new();
        w.add_string("general.architecture", "test");
        w.add_tensor_f32("t", &[2], vec![1.0, 2.0]);
        w.write_to(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), w.to_bytes());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temp file left");
        fs::remove_dir_all(&dir).unwrap();
    }
}
