//! CLIP's byte-level BPE tokenizer, as transformers' `CLIPTokenizer` (the one diffusers loads
//! for Stable Diffusion 1.x, 2.x and XL) encodes text when ftfy is not installed, which is the
//! usual case:
//!
//! 0. the special tokens (`<|startoftext|>`, `<|endoftext|>`, and the pad token when it is a
//!    vocabulary word such as SD-2's `!`) are cut out of the raw text, exactly and case-sensitively;
//! 1. each remaining piece is cleaned as transformers' BasicTokenizer does: characters of the
//!    Unicode "other" categories (controls, format characters such as zero-width joiners,
//!    unassigned code points) are deleted, tab, newline, carriage return and space separators
//!    become spaces, CJK ideographs are set apart, NFC is applied, and every whitespace-separated
//!    word is lowercased (with Greek final sigma);
//! 2. the pattern `'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+` (case-insensitive, so
//!    `'ſ` counts as `'s`, and U+0345 matches nothing) splits it into words;
//! 3. each word's UTF-8 bytes are mapped to printable characters and merged by BPE rank (the
//!    last symbol carries `</w>`);
//! 4. `<|startoftext|>` + the first `max_length - 2` ids + `<|endoftext|>`, padded.
//!
//! The character classes are Unicode 14's, the version of Python 3.11's `unicodedata` that the
//! reference runs on (`unicode_tables.rs`). This is written out rather than built on the
//! `tokenizers` crate because that library cannot reproduce steps 1 and 2 exactly (its NFC
//! tables predate Unicode 10, and its normalizers cannot delete by category or space out CJK).

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;

use super::unicode_tables::{LETTER, NUMBER, OTHER, SPACE_SEPARATOR};
use crate::error::{Error, Result};

const START: &str = "<|startoftext|>";
const END: &str = "<|endoftext|>";

fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(a, b)| {
            if b < c {
                std::cmp::Ordering::Less
            } else if a > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn is_letter(c: char) -> bool {
    in_table(&LETTER, c)
}

fn is_number(c: char) -> bool {
    in_table(&NUMBER, c)
}

/// The CJK ideograph blocks BasicTokenizer sets apart.
fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// Whitespace left after the clean-up: the space it maps to, and the line and paragraph
/// separators (Python's `str.split` splits there too).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\u{2028}' | '\u{2029}')
}

/// GPT-2's reversible byte -> printable character map.
fn byte_chars() -> [char; 256] {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut out = ['\0'; 256];
    for (b, c) in printable.into_iter().zip(chars) {
        out[b as usize] = char::from_u32(c).expect("valid code point");
    }
    out
}

/// CLIP's byte-level BPE tokenizer, encoding as transformers' `CLIPTokenizer` does (see the module docs).
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    bytes: [char; 256],
    /// Tokens cut out of the raw text before anything else, longest first.
    specials: Vec<(String, u32)>,
    bos: u32,
    eos: u32,
    pad: u32,
    /// `model_max_length`: every encoding is this many ids (77 for Stable Diffusion).
    pub max_length: usize,
}

impl ClipTokenizer {
    /// From `vocab.json` and `merges.txt` contents, with the pad token (a vocabulary entry) and
    /// `model_max_length`.
    pub fn new(vocab_json: &str, merges_txt: &str, pad_token: &str, max_length: usize) -> Result<Self> {
        let vocab: HashMap<String, u32> = serde_json::from_str(vocab_json).map_err(|e| Error::param("vocab.json", format!("not a token -> id map: {e}")))?;
        let id = |t: &str, what: &str| vocab.get(t).copied().ok_or_else(|| Error::param(what.to_owned(), format!("`{t}` is not in vocab.json")));
        let (bos, eos, pad) = (id(START, "bos_token")?, id(END, "eos_token")?, id(pad_token, "pad_token")?);
        // transformers reads at most the merges that fit the vocabulary (the first 49152-258)
        let limit = vocab.len().saturating_sub(258).max(1);
        let mut ranks = HashMap::new();
        for (rank, line) in merges_txt.lines().filter(|l| !l.starts_with("#version")).take(limit).enumerate() {
            match line.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                    ranks.insert((a.to_owned(), b.to_owned()), rank);
                }
                _ => return Err(Error::param("merges.txt", format!("line {} is not `a b`: {line:?}", rank + 2))),
            }
        }
        if !(3..=1 << 16).contains(&max_length) {
            return Err(Error::param("model_max_length", format!("{max_length} must lie between 3 and 65536")));
        }
        let mut specials = vec![(START.to_owned(), bos), (END.to_owned(), eos)];
        if pad_token != START && pad_token != END {
            specials.push((pad_token.to_owned(), pad));
        }
        specials.sort_by_key(|b| std::cmp::Reverse(b.0.len()));
        Ok(Self { vocab, ranks, bytes: byte_chars(), specials, bos, eos, pad, max_length })
    }

    /// Token ids of `text` between `<|startoftext|>` and `<|endoftext|>`, before truncation.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        // 0: the special tokens, exactly as written
        while !rest.is_empty() {
            let hit = (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .find_map(|i| self.specials.iter().find(|(s, _)| rest[i..].starts_with(s.as_str())).map(|(s, id)| (i, s.len(), *id)));
            match hit {
                Some((i, len, id)) => {
                    self.tokenize_plain(&rest[..i], &mut ids);
                    ids.push(id);
                    rest = &rest[i + len..];
                }
                None => {
                    self.tokenize_plain(rest, &mut ids);
                    break;
                }
            }
        }
        ids
    }

    fn tokenize_plain(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        // 1: BasicTokenizer's clean-up, CJK spacing, NFC, per-word lowercasing
        let mut cleaned = String::with_capacity(text.len());
        for c in text.chars() {
            if c == '\0' || c == '\u{FFFD}' || in_table(&OTHER, c) {
                continue;
            }
            if matches!(c, '\t' | '\n' | '\r') || in_table(&SPACE_SEPARATOR, c) {
                cleaned.push(' ');
            } else if is_cjk(c) {
                cleaned.push(' ');
                cleaned.push(c);
                cleaned.push(' ');
            } else {
                cleaned.push(c);
            }
        }
        let normal: String = cleaned.nfc().collect();
        let lowered: Vec<String> = normal.split(is_space).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
        let joined = lowered.join(" ");
        // 2: the pattern, then 3: BPE per match
        for word in pre_tokenize(&joined) {
            match word {
                Piece::Special(s) => ids.push(if s == START { self.bos } else { self.eos }),
                Piece::Text(w) => self.bpe(w, ids),
            }
        }
    }

    fn bpe(&self, word: &str, ids: &mut Vec<u32>) {
        let chars: Vec<char> = word.bytes().map(|b| self.bytes[b as usize]).collect();
        let mut symbols: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = symbols.last_mut() {
            last.push_str("</w>");
        }
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|p| self.ranks.get(&(p[0].clone(), p[1].clone())).map(|&r| (r, p[0].clone(), p[1].clone())))
                .min_by_key(|(r, _, _)| *r);
            let Some((_, a, b)) = best else { break };
            // merge every occurrence, left to right
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == a && symbols[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            symbols = merged;
        }
        // every byte character is in the vocabulary, so nothing is unknown
        ids.extend(symbols.iter().map(|s| self.vocab.get(s).copied().unwrap_or(self.eos)));
    }

    /// `max_length` ids: start token, the first `max_length - 2` ids of `text`, end token, padding
    /// (`padding="max_length", truncation=True`, as diffusers calls the tokenizer).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let body = self.tokenize(text);
        let keep = body.len().min(self.max_length - 2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }

    /// How many tokens `text` has, and how many fit between the start and end tokens.
    pub fn token_counts(&self, text: &str) -> (usize, usize) {
        (self.tokenize(text).len(), self.max_length - 2)
    }
}

enum Piece<'a> {
    Special(&'a str),
    Text(&'a str),
}

/// Step 2, as the reference's case-insensitive pattern splits the lowercased text: the lowercase
/// spellings of the special tokens, the contractions (`'ſ` counting as `'s`), runs of letters, single
/// digits, runs of anything else but whitespace; U+0345 matches nothing and is dropped.
fn pre_tokenize(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    let next_len = |s: &str| s.chars().next().map(char::len_utf8).unwrap_or(1);
    while i < text.len() {
        let rest = &text[i..];
        let c = rest.chars().next().expect("not at the end");
        if is_space(c) || c == '\u{0345}' {
            i += c.len_utf8();
            continue;
        }
        if let Some(s) = [START, END].into_iter().find(|s| rest.starts_with(s)) {
            out.push(Piece::Special(s));
            i += s.len();
            continue;
        }
        if let Some(k) = ["'s", "'ſ", "'t", "'re", "'ve", "'m", "'ll", "'d"].into_iter().find(|k| rest.starts_with(k)) {
            out.push(Piece::Text(k));
            i += k.len();
            continue;
        }
        let end = if is_letter(c) {
            rest.char_indices().find(|&(_, ch)| !is_letter(ch)).map(|(j, _)| j).unwrap_or(rest.len())
        } else if is_number(c) {
            next_len(rest)
        } else {
            rest.char_indices().find(|&(_, ch)| is_space(ch) || is_letter(ch) || is_number(ch) || ch == '\u{0345}').map(|(j, _)| j).unwrap_or(rest.len())
        };
        out.push(Piece::Text(&rest[..end]));
        i += end;
    }
    out
}
