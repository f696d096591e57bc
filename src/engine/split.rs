//! Which part of the user's text is the question and which is evidence.
//!
//! DMS weights the evidence (claims, hints, context) and never the question: the question is the
//! instruction the answer must follow, and scaling it breaks the answer at every weight away
//! from 1 (DESIGN.md section 3). The split of one user message:
//!
//! 1. Parts the request marks ([`ContentPart::Question`], [`ContentPart::Evidence`]) are what
//!    they say; when a message marks a question, its unmarked text parts are evidence.
//! 2. Otherwise, in a message with two or more text parts the last unmarked one is the question
//!    and the others are evidence.
//! 3. Otherwise the one text part is cut before its last sentence that ends with `?`, or, with
//!    no `?`, before its last sentence: that sentence and what follows it are the question, the
//!    sentences before it the evidence. A single sentence is all question (no evidence).

use super::prompt::{ContentPart, Message, Role};

/// How much of one text part is evidence: the first `evidence_bytes` bytes (the rest is the
/// question).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextSplit {
    /// Length in bytes of the evidence at the start of the part.
    pub evidence_bytes: usize,
}

/// The split of every text part of `message`, in order of its text parts (empty for messages
/// that are not the user's: their text is never weighted).
pub fn split_message(message: &Message) -> Vec<TextSplit> {
    if message.role != Role::User {
        return Vec::new();
    }
    let texts: Vec<&ContentPart> = message
        .content
        .iter()
        .filter(|p| p.text().is_some())
        .collect();
    let marks_question = texts.iter().any(|p| matches!(p, ContentPart::Question(_)));
    let last_unmarked = texts
        .iter()
        .rposition(|p| matches!(p, ContentPart::Text(_)));
    texts
        .iter()
        .enumerate()
        .map(|(k, part)| {
            let len = part.text().map_or(0, str::len);
            let evidence_bytes = match part {
                ContentPart::Question(_) => 0,
                ContentPart::Evidence(_) => len,
                ContentPart::Text(_) if marks_question => len,
                ContentPart::Text(t) if texts.len() == 1 => question_start(t),
                ContentPart::Text(_) if Some(k) == last_unmarked => 0,
                _ => len,
            };
            TextSplit { evidence_bytes }
        })
        .collect()
}

/// The byte offset where the question of `text` starts: before its last sentence ending with
/// `?`, else before its last sentence. Leading whitespace of the question stays with it (so the
/// tokens of the whole text are the tokens of its two halves). 0 for a single sentence.
pub fn question_start(text: &str) -> usize {
    let starts = sentence_starts(text);
    let question = starts
        .iter()
        .rev()
        .find(|&&s| sentence_at(text, s).trim_end().ends_with('?'))
        .or(starts.last())
        .copied()
        .unwrap_or(0);
    // Back up over the whitespace before the sentence.
    text[..question].trim_end().len()
}

/// Byte offsets where sentences start: 0, and after `.`, `!`, `?` or a newline that is
/// followed by whitespace (the first non-space character after it).
fn sentence_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        let ends = matches!(c, '.' | '!' | '?' | '\n');
        let followed_by_space = chars.peek().is_some_and(|(_, n)| n.is_whitespace());
        if ends && (followed_by_space || c == '\n') {
            while chars.peek().is_some_and(|(_, n)| n.is_whitespace()) {
                chars.next();
            }
            if let Some(&(at, _)) = chars.peek() {
                starts.push(at);
            }
        }
    }
    starts.dedup();
    starts
}

/// The sentence that starts at `start` (up to the next sentence start or the end).
fn sentence_at(text: &str, start: usize) -> &str {
    let next = sentence_starts(text)
        .into_iter()
        .find(|&s| s > start)
        .unwrap_or(text.len());
    &text[start..next]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(parts: Vec<ContentPart>) -> Message {
        Message {
            role: Role::User,
            content: parts,
        }
    }

    fn evidence_of(text: &str) -> &str {
        &text[..question_start(text)]
    }

    #[test]
    fn the_last_question_sentence_is_the_question() {
        let t = "This is a photo of something red. What is the main color of this image?";
        assert_eq!(evidence_of(t), "This is a photo of something red.");
        assert_eq!(
            &t[question_start(t)..],
            " What is the main color of this image?"
        );
        let t = "Is it red? My friend says it is blue. Which colour is it? Answer in one word.";
        assert_eq!(evidence_of(t), "Is it red? My friend says it is blue.");
    }

    #[test]
    fn without_a_question_mark_the_last_sentence_is_the_question() {
        let t = "Here is my photo. Describe the image.";
        assert_eq!(evidence_of(t), "Here is my photo.");
        assert_eq!(question_start("What is the main color of this image?"), 0);
        assert_eq!(question_start("Describe the image."), 0);
        assert_eq!(question_start(""), 0);
        // Abbreviations without a following space do not cut.
        assert_eq!(question_start("The file v1.2 is here"), 0);
        let t = "Context line one\nWhat is this?";
        assert_eq!(evidence_of(t), "Context line one");
    }

    #[test]
    fn several_parts_make_the_last_one_the_question() {
        let m = user(vec![
            ContentPart::Image(vec![1]),
            ContentPart::Text("This is red.".into()),
            ContentPart::Text("What colour?".into()),
        ]);
        let s = split_message(&m);
        assert_eq!(s[0].evidence_bytes, "This is red.".len());
        assert_eq!(s[1].evidence_bytes, 0);
    }

    #[test]
    fn marks_win_over_the_rule() {
        let m = user(vec![
            ContentPart::Question("Name the colour. It matters.".into()),
            ContentPart::Text("I think it is red.".into()),
        ]);
        let s = split_message(&m);
        assert_eq!(s[0].evidence_bytes, 0);
        assert_eq!(s[1].evidence_bytes, "I think it is red.".len());
        let m = user(vec![ContentPart::Evidence("Red. Or blue?".into())]);
        assert_eq!(split_message(&m)[0].evidence_bytes, "Red. Or blue?".len());
    }

    #[test]
    fn other_roles_have_no_evidence() {
        let m = Message::text(Role::System, "You are helpful. Be brief.");
        assert!(split_message(&m).is_empty());
    }
}
