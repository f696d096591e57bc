//! Streaming detokenisation: UTF-8-safe pieces and stop strings that may span tokens.

/// Collects token bytes and releases text that is complete UTF-8 and cannot be the start of a
/// stop string; reports when a stop string has appeared (the stop string itself is not emitted).
#[derive(Debug, Default)]
pub struct TextStream {
    bytes: Vec<u8>,
    held: String,
    stops: Vec<String>,
}

/// What feeding a token produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Text that can be sent now (possibly empty).
    Text(String),
    /// A stop string appeared: send this last text, then finish.
    Stop(String),
}

impl TextStream {
    /// A stream that stops at any of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Self::default()
        }
    }

    /// Adds the bytes of one token.
    pub fn feed(&mut self, token_bytes: &[u8]) -> Fed {
        self.bytes.extend_from_slice(token_bytes);
        let valid = match std::str::from_utf8(&self.bytes) {
            Ok(s) => s.len(),
            // A sequence that can never become valid is replaced, not held forever.
            Err(e) if e.error_len().is_some() => {
                let lossy = String::from_utf8_lossy(&self.bytes).into_owned();
                self.bytes.clear();
                self.held.push_str(&lossy);
                return self.release();
            }
            Err(e) => e.valid_up_to(),
        };
        let rest = self.bytes.split_off(valid);
        let complete = std::mem::replace(&mut self.bytes, rest);
        self.held
            .push_str(std::str::from_utf8(&complete).unwrap_or_default());
        self.release()
    }

    fn release(&mut self) -> Fed {
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Fed::Stop(text);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(move |&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Fed::Text(text)
    }

    /// Whatever is still held at the end of generation (incomplete UTF-8 is replaced).
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.bytes)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], tokens: &[&[u8]]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(&stops);
        let mut out = String::new();
        for t in tokens {
            match s.feed(t) {
                Fed::Text(x) => out.push_str(&x),
                Fed::Stop(x) => {
                    out.push_str(&x);
                    return (out, true);
                }
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn multibyte_characters_split_across_tokens() {
        let e = "é".as_bytes();
        let mut s = TextStream::new(&[]);
        assert_eq!(s.feed(&e[..1]), Fed::Text(String::new()));
        assert_eq!(s.feed(&e[1..]), Fed::Text("é".into()));
    }

    #[test]
    fn stop_string_across_tokens_is_cut() {
        assert_eq!(
            run(&["END"], &[b"hello E", b"N", b"D more"]),
            ("hello ".into(), true)
        );
        assert_eq!(
            run(&["END"], &[b"hello E", b"x"]),
            ("hello Ex".into(), false)
        );
    }

    #[test]
    fn invalid_bytes_are_replaced_not_held() {
        assert_eq!(run(&[], &[b"a\xff", b"b"]), ("a\u{fffd}b".into(), false));
    }
}
