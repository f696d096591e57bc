//! A minimal GGUF reader used only to check what the writer produced.

use std::collections::BTreeMap;

/// A parsed metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    Arr(Vec<Val>),
}

/// A parsed tensor info plus its raw bytes.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub shape: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// A parsed file.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub kv_order: Vec<String>,
    pub kvs: BTreeMap<String, Val>,
    pub tensor_order: Vec<String>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl Parsed {
    pub fn u32(&self, k: &str) -> u32 {
        match &self.kvs[k] {
            Val::U32(v) => *v,
            v => panic!("{k}: {v:?} is not u32"),
        }
    }
    pub fn str(&self, k: &str) -> &str {
        match &self.kvs[k] {
            Val::Str(v) => v,
            v => panic!("{k}: {v:?} is not a string"),
        }
    }
    pub fn strings(&self, k: &str) -> Vec<String> {
        match &self.kvs[k] {
            Val::Arr(v) => v
                .iter()
                .map(|x| match x {
                    Val::Str(s) => s.clone(),
                    x => panic!("{k}: {x:?} is not a string"),
                })
                .collect(),
            v => panic!("{k}: {v:?} is not an array"),
        }
    }
    pub fn f32s(&self, name: &str) -> Vec<f32> {
        let t = &self.tensors[name];
        match t.ggml_type {
            0 => t
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            1 => t
                .bytes
                .chunks_exact(2)
                .map(|c| super::gguf_writer::f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            ty => panic!("{name}: unsupported type {ty}"),
        }
    }
}

struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}

impl Cur<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.p..self.p + n];
        self.p += n;
        s
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn str(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn val(&mut self, ty: u32) -> Val {
        match ty {
            4 => Val::U32(self.u32()),
            5 => Val::I32(self.u32() as i32),
            6 => Val::F32(f32::from_bits(self.u32())),
            7 => Val::Bool(match self.u8() {
                0 => false,
                1 => true,
                b => panic!("bad bool byte {b}"),
            }),
            8 => Val::Str(self.str()),
            9 => {
                let et = self.u32();
                let n = self.u64();
                Val::Arr((0..n).map(|_| self.val(et)).collect())
            }
            10 => Val::U64(self.u64()),
            t => panic!("unexpected value type {t}"),
        }
    }
}

/// Parses a whole GGUF v3 file, checking alignment and that the data section is exact.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut c = Cur { b: bytes, p: 0 };
    assert_eq!(c.take(4), b"GGUF");
    assert_eq!(c.u32(), 3);
    let n_tensors = c.u64();
    let n_kv = c.u64();
    let mut kv_order = Vec::new();
    let mut kvs = BTreeMap::new();
    for _ in 0..n_kv {
        let k = c.str();
        let ty = c.u32();
        let v = c.val(ty);
        assert!(kvs.insert(k.clone(), v).is_none(), "duplicate key {k}");
        kv_order.push(k);
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = c.str();
        let nd = c.u32();
        let shape: Vec<u64> = (0..nd).map(|_| c.u64()).collect();
        let ty = c.u32();
        let off = c.u64();
        infos.push((name, shape, ty, off));
    }
    let data_start = c.p.div_ceil(32) * 32;
    assert!(bytes[c.p..data_start].iter().all(|&b| b == 0));
    let mut tensor_order = Vec::new();
    let mut tensors = BTreeMap::new();
    let mut expected_off = 0u64;
    for (name, shape, ty, off) in infos {
        assert_eq!(off % 32, 0, "{name} misaligned");
        assert_eq!(off, expected_off, "{name} offset");
        let elem = match ty {
            0 => 4,
            1 => 2,
            t => panic!("type {t}"),
        };
        let n = shape.iter().product::<u64>() * elem;
        let s = data_start + off as usize;
        let b = bytes[s..s + n as usize].to_vec();
        expected_off = (off + n).div_ceil(32) * 32;
        tensor_order.push(name.clone());
        let info = TensorInfo {
            shape,
            ggml_type: ty,
            offset: off,
            bytes: b,
        };
        assert!(tensors.insert(name.clone(), info).is_none(), "dup {name}");
    }
    assert_eq!(
        bytes.len(),
        data_start + expected_off as usize,
        "file length"
    );
    Parsed {
        kv_order,
        kvs,
        tensor_order,
        tensors,
    }
}
