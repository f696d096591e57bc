//! Building the model input from a conversation: the chat template renders the messages, and
//! the result is cut into pieces that know what they are (template text, user text, image), so
//! that only user text and images are ever weighted.

use crate::llama::{
    apply_chat_template, Bitmap, ChatMessage, Chunks, Model, Mtmd, PromptPart, Token,
};

use super::image::RgbImage;
use super::lru::{content_key, ContentKey};
use super::split::split_message;
use super::EngineError;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model (never weighted).
    System,
    /// The user (text weighted by the text weight, images by their image weights).
    User,
    /// Earlier model replies (never weighted).
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentPart {
    /// Text; in a user message it is split into question and evidence by the default rule
    /// (see [`super::split`]).
    Text(String),
    /// User text marked as the question: never weighted, kept in every signal pass.
    Question(String),
    /// User text marked as evidence (claims, hints, context): scaled by the text weight.
    Evidence(String),
    /// An encoded image (PNG, JPEG, WebP, GIF, BMP bytes).
    Image(Vec<u8>),
}

impl ContentPart {
    /// The text of a text part, whatever its mark (`None` for an image).
    pub fn text(&self) -> Option<&str> {
        match self {
            ContentPart::Text(t) | ContentPart::Question(t) | ContentPart::Evidence(t) => Some(t),
            ContentPart::Image(_) => None,
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text and images in order.
    pub content: Vec<ContentPart>,
}

impl Message {
    /// A text-only message.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![ContentPart::Text(text.into())],
        }
    }
}

/// A piece of the prompt, in order.
pub enum Piece {
    /// Text tokens; `evidence` marks the user's evidence (scaled by the text weight); the
    /// template, the question and other roles' text are never scaled.
    Text { tokens: Vec<Token>, evidence: bool },
    /// The chunks of image `index` (may include the model's own image begin/end tokens).
    Image { index: usize, chunks: Chunks },
}

/// How the rendered template text is cut.
enum Segment {
    Template(String),
    UserText(usize),
    Image(usize),
}

/// A tokenized prompt ready for prefill.
pub struct Prompt {
    /// BOS token to put first, when the vocabulary asks for one.
    pub bos: Option<Token>,
    /// The pieces after the BOS.
    pub pieces: Vec<Piece>,
    segments: Vec<Segment>,
    user_texts: Vec<String>,
    bitmaps: Vec<Bitmap>,
    /// The SHA-256 key of each image's pixels (the key of its cached embeddings and KV).
    image_keys: Vec<ContentKey>,
}

/// The SHA-256 key of an image's size and pixels (equal images, however they were encoded, get
/// the same key).
fn image_key(image: &RgbImage) -> ContentKey {
    content_key(&[
        &image.width.to_le_bytes(),
        &image.height.to_le_bytes(),
        &image.pixels,
    ])
}

const TEXT_MARK: char = '\u{E000}';
const IMAGE_MARK: char = '\u{E001}';
const END_MARK: char = '\u{E002}';

fn strip_marks(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(*c, TEXT_MARK | IMAGE_MARK | END_MARK))
        .collect()
}

impl Prompt {
    /// Renders `messages` with the model's template and tokenizes every piece. `images` are the
    /// decoded images in order of appearance.
    pub fn build(
        model: &Model,
        mtmd: Option<&Mtmd<'_>>,
        messages: &[Message],
        images: &[RgbImage],
    ) -> Result<Self, EngineError> {
        if messages.is_empty() {
            return Err(EngineError::InvalidRequest("no messages".into()));
        }
        let mut user_texts = Vec::new();
        let mut evidence_bytes = Vec::new();
        let mut n_images = 0;
        let mut chat = Vec::with_capacity(messages.len());
        for m in messages {
            let mut content = String::new();
            let mut splits = split_message(m).into_iter();
            for part in &m.content {
                match (part, part.text()) {
                    (_, Some(t)) if m.role == Role::User => {
                        content.push_str(&format!("{TEXT_MARK}{}{END_MARK}", user_texts.len()));
                        user_texts.push(t.to_string());
                        evidence_bytes.push(splits.next().map_or(0, |s| s.evidence_bytes));
                    }
                    // The template gets C strings: a NUL would fail it as a server error.
                    (_, Some(t)) if t.contains('\0') => {
                        return Err(EngineError::InvalidRequest(
                            "message text must not contain NUL characters".into(),
                        ))
                    }
                    (_, Some(t)) => content.push_str(&strip_marks(t)),
                    (_, None) => {
                        content.push_str(&format!("{IMAGE_MARK}{n_images}{END_MARK}"));
                        n_images += 1;
                    }
                }
            }
            chat.push(ChatMessage {
                role: m.role.as_str().to_string(),
                content,
            });
        }
        if n_images != images.len() {
            return Err(EngineError::InvalidRequest(format!(
                "{n_images} images in the messages but {} decoded",
                images.len()
            )));
        }
        if n_images > 0 && mtmd.is_none() {
            return Err(EngineError::InvalidRequest(
                "this model has no vision projector (start it with --mmproj) and cannot take images".into(),
            ));
        }
        let rendered = apply_chat_template(model, &chat, true)?;
        let segments = split_rendered(&rendered, user_texts.len(), n_images)?;
        let bitmaps = images
            .iter()
            .map(|i| Bitmap::from_rgb(i.width, i.height, &i.pixels))
            .collect::<Result<Vec<_>, _>>()?;

        let mut pieces = Vec::with_capacity(segments.len());
        for seg in &segments {
            match seg {
                Segment::Template(s) => pieces.push(Piece::Text {
                    tokens: model.tokenize(s, false, true)?,
                    evidence: false,
                }),
                Segment::UserText(k) => {
                    let text = &user_texts[*k];
                    let tokens = model.tokenize(text, false, false)?;
                    let cut = evidence_tokens(model, text, evidence_bytes[*k], &tokens)?;
                    let (evidence, question) = tokens.split_at(cut);
                    for (tokens, evidence) in [(evidence, true), (question, false)] {
                        pieces.push(Piece::Text {
                            tokens: tokens.to_vec(),
                            evidence,
                        });
                    }
                }
                Segment::Image(k) => {
                    let mtmd = mtmd.expect("checked above: images need mtmd");
                    let chunks = mtmd.tokenize(&[PromptPart::Image(&bitmaps[*k])])?;
                    pieces.push(Piece::Image { index: *k, chunks });
                }
            }
        }
        pieces.retain(|p| !matches!(p, Piece::Text { tokens, .. } if tokens.is_empty()));
        let first = pieces.iter().find_map(|p| match p {
            Piece::Text { tokens, .. } => tokens.first().copied(),
            Piece::Image { .. } => None,
        });
        let bos = (model.add_bos() && first != Some(model.token_bos())).then(|| model.token_bos());
        Ok(Self {
            bos,
            pieces,
            segments,
            user_texts,
            bitmaps,
            image_keys: images.iter().map(image_key).collect(),
        })
    }

    /// A prompt from raw text, without a chat template (control-token text is parsed, as in
    /// llama.cpp's completion endpoint).
    pub fn raw(model: &Model, text: &str) -> Result<Self, EngineError> {
        if text.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let tokens = model.tokenize(text, false, true)?;
        let bos = (model.add_bos() && tokens.first() != Some(&model.token_bos()))
            .then(|| model.token_bos());
        Ok(Self {
            bos,
            pieces: vec![Piece::Text {
                tokens,
                evidence: false,
            }],
            segments: vec![Segment::Template(text.to_string())],
            user_texts: Vec::new(),
            bitmaps: Vec::new(),
            image_keys: Vec::new(),
        })
    }

    /// Number of evidence tokens (the user text the text weight scales).
    pub fn n_evidence_tokens(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text {
                    tokens,
                    evidence: true,
                } => tokens.len(),
                _ => 0,
            })
            .sum()
    }

    /// Number of images in the prompt.
    pub fn n_images(&self) -> usize {
        self.bitmaps.len()
    }

    /// A key for the `ordinal`-th image chunk of image `index`: equal for equal pixels.
    pub fn image_chunk_key(&self, index: usize, ordinal: usize) -> ContentKey {
        let image = self.image_keys.get(index).copied().unwrap_or_default();
        content_key(&[&image, &(ordinal as u64).to_le_bytes()])
    }

    /// The identity of the whole prompt: its pieces in order, text by token and images by pixel
    /// key (equal prompts, however they were built, get the same key).
    pub fn content_key(&self) -> ContentKey {
        let mut bytes: Vec<u8> = Vec::new();
        bytes.extend(self.bos.iter().flat_map(|t| t.to_le_bytes()));
        for p in &self.pieces {
            match p {
                Piece::Text { tokens, evidence } => {
                    bytes.push(if *evidence { b'e' } else { b't' });
                    bytes.extend((tokens.len() as u64).to_le_bytes());
                    bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
                }
                Piece::Image { index, .. } => {
                    bytes.push(b'i');
                    bytes.extend(self.image_keys.get(*index).copied().unwrap_or_default());
                }
            }
        }
        content_key(&[&bytes])
    }

    /// KV positions the prompt occupies.
    pub fn n_positions(&self) -> usize {
        usize::from(self.bos.is_some())
            + self
                .pieces
                .iter()
                .map(|p| match p {
                    Piece::Text { tokens, .. } => tokens.len(),
                    Piece::Image { chunks, .. } => chunks.n_pos(),
                })
                .sum::<usize>()
    }

    /// Number of prompt tokens (text tokens plus image embedding rows), as reported in usage.
    pub fn n_tokens(&self) -> usize {
        usize::from(self.bos.is_some())
            + self
                .pieces
                .iter()
                .map(|p| match p {
                    Piece::Text { tokens, .. } => tokens.len(),
                    Piece::Image { chunks, .. } => chunks.iter().map(|c| c.n_tokens()).sum(),
                })
                .sum::<usize>()
    }

    /// The same prompt tokenized by mtmd in one call (what llama.cpp itself would evaluate),
    /// without the BOS. Text pieces keep their own special-token parsing.
    pub fn reference_chunks(&self, mtmd: &Mtmd<'_>) -> Result<Chunks, EngineError> {
        let parts: Vec<PromptPart<'_>> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Template(t) => PromptPart::Text {
                    text: t,
                    parse_special: true,
                },
                Segment::UserText(k) => PromptPart::Text {
                    text: &self.user_texts[*k],
                    parse_special: false,
                },
                Segment::Image(k) => PromptPart::Image(&self.bitmaps[*k]),
            })
            .collect();
        Ok(mtmd.tokenize(&parts)?)
    }

    /// All text tokens in order (image chunks contribute their own text tokens only).
    pub fn text_tokens(&self) -> Vec<Token> {
        let mut out: Vec<Token> = self.bos.into_iter().collect();
        for p in &self.pieces {
            match p {
                Piece::Text { tokens, .. } => out.extend_from_slice(tokens),
                Piece::Image { chunks, .. } => chunks
                    .iter()
                    .for_each(|c| out.extend_from_slice(c.tokens())),
            }
        }
        out
    }
}

/// How many of `tokens` (the tokens of `text`) are evidence, when its first `evidence_bytes`
/// bytes are: the tokens the evidence alone shares with the whole text, so that the two halves
/// are exactly the whole text's tokens (a token straddling the cut goes to the question).
fn evidence_tokens(
    model: &Model,
    text: &str,
    evidence_bytes: usize,
    tokens: &[Token],
) -> Result<usize, EngineError> {
    if evidence_bytes == 0 {
        return Ok(0);
    }
    if evidence_bytes >= text.len() {
        return Ok(tokens.len());
    }
    let evidence = model.tokenize(&text[..evidence_bytes], false, false)?;
    Ok(common_prefix_len(&evidence, tokens))
}

fn common_prefix_len(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Cuts the rendered template at our placeholders; each must appear exactly once.
fn split_rendered(
    rendered: &str,
    n_texts: usize,
    n_images: usize,
) -> Result<Vec<Segment>, EngineError> {
    let mut segments = Vec::new();
    let mut seen_text = vec![false; n_texts];
    let mut seen_image = vec![false; n_images];
    let mut rest = rendered;
    let dropped = || {
        EngineError::InvalidRequest(
            "the chat template dropped or repeated part of the conversation".into(),
        )
    };
    while let Some(at) = rest.find([TEXT_MARK, IMAGE_MARK]) {
        if at > 0 {
            segments.push(Segment::Template(rest[..at].to_string()));
        }
        let mark = rest[at..].chars().next().unwrap_or(TEXT_MARK);
        let body = &rest[at + mark.len_utf8()..];
        let end = body.find(END_MARK).ok_or_else(dropped)?;
        let k: usize = body[..end].parse().map_err(|_| dropped())?;
        let seen = if mark == TEXT_MARK {
            &mut seen_text
        } else {
            &mut seen_image
        };
        match seen.get_mut(k) {
            Some(s) if !*s => *s = true,
            _ => return Err(dropped()),
        }
        segments.push(if mark == TEXT_MARK {
            Segment::UserText(k)
        } else {
            Segment::Image(k)
        });
        rest = &body[end + END_MARK.len_utf8()..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Template(rest.to_string()));
    }
    if seen_text.iter().chain(&seen_image).any(|s| !s) {
        return Err(dropped());
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_template_is_cut_at_placeholders() {
        let r = format!("<s>user\n{IMAGE_MARK}0{END_MARK}{TEXT_MARK}0{END_MARK}</s>assistant\n");
        let segs = split_rendered(&r, 1, 1).unwrap();
        assert!(matches!(&segs[0], Segment::Template(t) if t == "<s>user\n"));
        assert!(matches!(segs[1], Segment::Image(0)));
        assert!(matches!(segs[2], Segment::UserText(0)));
        assert!(matches!(&segs[3], Segment::Template(t) if t == "</s>assistant\n"));
    }

    #[test]
    fn missing_or_repeated_placeholders_are_errors() {
        assert!(split_rendered("nothing", 1, 0).is_err());
        let twice = format!("{TEXT_MARK}0{END_MARK}{TEXT_MARK}0{END_MARK}");
        assert!(split_rendered(&twice, 1, 0).is_err());
    }

    #[test]
    fn marks_are_stripped_from_unweighted_text() {
        assert_eq!(strip_marks(&format!("a{TEXT_MARK}0{END_MARK}b")), "a0b");
    }
}
