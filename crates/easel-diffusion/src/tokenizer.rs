//! The CLIP byte-pair-encoding tokenizer of Stable Diffusion 1.x text encoders.
//!
//! [`ClipTokenizer`] reproduces, id for id, the tokenizer that diffusers' Stable Diffusion
//! pipelines load from a model's `tokenizer/` folder: transformers' `CLIPTokenizer` (in
//! transformers >= 5 the tokenizers-backed one, formerly `CLIPTokenizerFast`), as for
//! `openai/clip-vit-large-patch14`. Its pipeline, which this module follows step by step:
//!
//! 1. **Special tokens** (`<|startoftext|>`, `<|endoftext|>`, and any added token marked
//!    `normalized: false`) are cut out of the *raw* text first, exactly as written.
//! 2. **Normalization** of the rest: Unicode NFC, every run of whitespace (`\s+`) to one space,
//!    then lower-casing char by char (`char::to_lowercase`, so no final-sigma rule). There is no
//!    ftfy and no HTML unescaping (open_clip's `SimpleTokenizer` runs ftfy; transformers doesn't).
//! 3. **Added tokens** (textual-inversion placeholders such as `<vangogh>`, see
//!    [`ClipTokenizer::add_token`]) are cut out of the normalized text, leftmost-longest,
//!    anywhere (also inside words: `x<vangogh>y` gives `x`, `<vangogh>`, `y`).
//! 4. **Pre-tokenization** with the CLIP pattern
//!    `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!    (leftmost-first; whitespace is dropped, so leading/trailing spaces vanish). The text is
//!    already lower-case, so open_clip's case-insensitive flag changes nothing. The byte-level
//!    step of the HF pipeline splits once more with the GPT-2 pattern, which only ever splits a
//!    (lower-cased, e.g. from `<|ENDOFTEXT|>`) special-token piece into `<|`, the word, `|>`.
//! 5. **Byte-level mapping**: each piece's UTF-8 bytes through GPT-2's `bytes_to_unicode`.
//! 6. **BPE** with `</w>` appended to the last symbol of each piece, merging the lowest-ranked
//!    pair first (leftmost on ties) until no listed merge applies.
//! 7. `<|startoftext|>` (49406) before, `<|endoftext|>` (49407) after; [`ClipTokenizer::encode_padded`]
//!    truncates to `max_len` keeping the end token and pads with the pad id (the end token by
//!    default, as `openai/clip-vit-large-patch14`; [`ClipTokenizer::set_pad_id`] changes it, e.g.
//!    to 0 = `!` as some SD 2.x / open_clip tokenizers do).
//!
//! It differs from open_clip's `SimpleTokenizer` (without ftfy) only where normalization does:
//! NFC, the final sigma, and case variants of the special tokens (`<|ENDOFTEXT|>`).
//!
//! # Sources
//! - [`ClipTokenizer::from_tokenizer_json`]: an HF `tokenizer.json` (BPE model; `model.vocab`,
//!   `model.merges` as `"a b"` strings or `["a", "b"]` pairs, `added_tokens`).
//! - [`ClipTokenizer::from_vocab_merges`]: the `vocab.json` + `merges.txt` pair.
//! - [`ClipTokenizer::from_open_clip_bpe`]: open_clip's `bpe_simple_vocab_16e6.txt` (the
//!   decompressed `.gz`), from which the 49,408-id vocabulary is derived as open_clip does.
//!
//! All take file *contents*: this module does no file or network I/O.
//!
//! # Why our own implementation rather than the `tokenizers` crate
//! `tokenizers` is already in the build (candle-core depends on it), so weight was not the
//! deciding factor. The CLIP pipeline is small (a few hundred lines here) and every step of it is
//! pinned by parity tests against transformers; owning it gives us a narrow, stable API
//! (`&str` in, `Vec<u32>` out, `candle_core::Result` errors), whole-word placeholder tokens with
//! exactly transformers' matching rules, configurable padding, and no dependence on the
//! `tokenizers` 0.x → 1.0 API churn or its onig/fancy-regex feature choices: the CLIP pattern
//! has no look-around, so the plain `regex` crate runs it. Dependencies: `regex`,
//! `serde_json` (to read `tokenizer.json`/`vocab.json`) and `unicode-normalization` (NFC).

use std::collections::HashMap;

use candle_core::{bail, Result};
use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// The sequence length of the SD 1.x CLIP text encoder.
pub const MAX_LEN: usize = 77;
/// The start-of-text token.
pub const START_TOKEN: &str = "<|startoftext|>";
/// The end-of-text token (also the unknown and, by default, the padding token).
pub const END_TOKEN: &str = "<|endoftext|>";
/// Appended to the last symbol of each pre-tokenized piece.
const END_OF_WORD: &str = "</w>";
/// The CLIP pre-tokenization pattern (applied to normalized, lower-cased text).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// Ids above this are refused, so a malformed file cannot make us allocate without bound.
const MAX_ID: u32 = 16_000_000;
/// The largest `max_len` accepted by `encode_padded` (guards against huge allocations).
const MAX_PADDED_LEN: usize = 1 << 20;
/// Number of merges of `bpe_simple_vocab_16e6.txt` in the CLIP vocabulary (49152 - 256 - 2).
const OPEN_CLIP_MERGES: usize = 49152 - 256 - 2;

/// A token matched as a whole before BPE (special tokens and added placeholders).
#[derive(Debug, Clone)]
struct AddedToken {
    /// The token as given (returned by `decode`).
    content: String,
    /// The string searched for: `content` itself when `normalized` is false, else its
    /// normalized form, matched against normalized text.
    pattern: String,
    id: u32,
    special: bool,
    normalized: bool,
}

/// The CLIP BPE tokenizer (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    /// id -> token string, for base vocabulary and added tokens.
    decoder: Vec<Option<String>>,
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    added: Vec<AddedToken>,
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    pattern: Regex,
    whitespace: Regex,
    start_id: u32,
    end_id: u32,
    pad_id: u32,
}

/// GPT-2's reversible map from bytes to printable characters.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        map[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    map
}

/// The bytes in the order of open_clip's `bytes_to_unicode().values()` (printable ranges first).
fn open_clip_byte_order() -> Vec<u8> {
    let mut order: Vec<u8> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let rest: Vec<u8> = (0..=255u8).filter(|b| !order.contains(b)).collect();
    order.extend(rest);
    order
}

/// Parses one merges line `"a b"`; `None` for the version header and blank lines.
fn parse_merge_line(line: &str, lineno: usize) -> Result<Option<(String, String)>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.is_empty() || (lineno == 1 && line.starts_with("#version")) {
        return Ok(None);
    }
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
            Ok(Some((a.to_string(), b.to_string())))
        }
        _ => bail!("merges line {lineno} is not two space-separated tokens: {line:?}"),
    }
}

impl ClipTokenizer {
    fn build(
        vocab: Vec<(String, u32)>,
        merges: Vec<(String, String)>,
        added: Vec<(String, u32, bool, bool)>,
    ) -> Result<Self> {
        let mut encoder = HashMap::with_capacity(vocab.len());
        let mut decoder: Vec<Option<String>> = Vec::new();
        for (token, id) in vocab {
            if id > MAX_ID {
                bail!("token {token:?} has id {id}, above the limit {MAX_ID}");
            }
            let slot = id as usize;
            if decoder.len() <= slot {
                decoder.resize(slot + 1, None);
            }
            if let Some(other) = &decoder[slot] {
                bail!("id {id} is given to both {other:?} and {token:?}");
            }
            decoder[slot] = Some(token.clone());
            if encoder.insert(token.clone(), id).is_some() {
                bail!("token {token:?} appears twice in the vocabulary");
            }
        }
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.into_iter().enumerate() {
            let lookup = |t: &str| -> Result<u32> {
                match encoder.get(t) {
                    Some(&id) => Ok(id),
                    None => {
                        bail!("merge {rank} ({a:?} {b:?}): token {t:?} is not in the vocabulary")
                    }
                }
            };
            let (ia, ib, ij) = (lookup(&a)?, lookup(&b)?, lookup(&format!("{a}{b}"))?);
            // A repeated pair keeps its first (lowest) rank, as in transformers.
            merge_map.entry((ia, ib)).or_insert((rank as u32, ij));
        }
        let byte_encoder = bytes_to_unicode();
        let byte_decoder = byte_encoder
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let pattern = Regex::new(CLIP_PATTERN).map_err(candle_core::Error::wrap)?;
        let whitespace = Regex::new(r"\s+").map_err(candle_core::Error::wrap)?;
        let (Some(&start_id), Some(&end_id)) = (encoder.get(START_TOKEN), encoder.get(END_TOKEN))
        else {
            bail!("the vocabulary lacks {START_TOKEN:?} or {END_TOKEN:?}");
        };
        let mut tok = Self {
            encoder,
            decoder,
            merges: merge_map,
            added: Vec::new(),
            byte_encoder,
            byte_decoder,
            pattern,
            whitespace,
            start_id,
            end_id,
            pad_id: end_id,
        };
        let mut added = added;
        if !added.iter().any(|(c, ..)| c == START_TOKEN) {
            added.push((START_TOKEN.to_string(), start_id, true, false));
        }
        if !added.iter().any(|(c, ..)| c == END_TOKEN) {
            added.push((END_TOKEN.to_string(), end_id, true, false));
        }
        for (content, id, special, normalized) in added {
            tok.register_added(content, id, special, normalized)?;
        }
        Ok(tok)
    }

    fn register_added(
        &mut self,
        content: String,
        id: u32,
        special: bool,
        normalized: bool,
    ) -> Result<()> {
        if content.is_empty() {
            bail!("added token with id {id} is empty");
        }
        if id > MAX_ID {
            bail!("added token {content:?} has id {id}, above the limit {MAX_ID}");
        }
        let slot = id as usize;
        if self.decoder.len() <= slot {
            self.decoder.resize(slot + 1, None);
        }
        match &self.decoder[slot] {
            Some(other) if *other != content => {
                bail!("added token {content:?} has id {id}, which is {other:?}")
            }
            _ => self.decoder[slot] = Some(content.clone()),
        }
        let pattern = if normalized {
            self.normalize(&content)
        } else {
            content.clone()
        };
        if pattern.is_empty() {
            bail!("added token {content:?} is empty once normalized");
        }
        self.added.retain(|t| t.content != content);
        self.added.push(AddedToken {
            content,
            pattern,
            id,
            special,
            normalized,
        });
        Ok(())
    }

    /// Builds the tokenizer from the contents of an HF `tokenizer.json` with a BPE model.
    pub fn from_tokenizer_json(json: &str) -> Result<Self> {
        let root: serde_json::Value =
            serde_json::from_str(json).map_err(candle_core::Error::wrap)?;
        let Some(model) = root.get("model") else {
            bail!("tokenizer.json has no \"model\"");
        };
        if let Some(kind) = model.get("type").and_then(|t| t.as_str()) {
            if kind != "BPE" {
                bail!("tokenizer.json model type is {kind:?}, expected \"BPE\"");
            }
        }
        match model.get("end_of_word_suffix") {
            None | Some(serde_json::Value::Null) => {}
            Some(s) if s.as_str() == Some(END_OF_WORD) => {}
            Some(s) => {
                bail!("tokenizer.json end_of_word_suffix is {s}, expected \"{END_OF_WORD}\"")
            }
        }
        let Some(vocab_obj) = model.get("vocab").and_then(|v| v.as_object()) else {
            bail!("tokenizer.json has no model.vocab object");
        };
        let vocab = parse_vocab_object(vocab_obj, "tokenizer.json model.vocab")?;
        let Some(merges_arr) = model.get("merges").and_then(|m| m.as_array()) else {
            bail!("tokenizer.json has no model.merges array");
        };
        let mut merges = Vec::with_capacity(merges_arr.len());
        for (i, m) in merges_arr.iter().enumerate() {
            let pair = match m {
                serde_json::Value::String(s) => parse_merge_line(s, i + 2)?,
                serde_json::Value::Array(a) => match (a.first(), a.get(1), a.len()) {
                    (Some(serde_json::Value::String(x)), Some(serde_json::Value::String(y)), 2) => {
                        Some((x.clone(), y.clone()))
                    }
                    _ => bail!("tokenizer.json merge {i} is not a pair of strings: {m}"),
                },
                _ => bail!("tokenizer.json merge {i} is neither \"a b\" nor [a, b]: {m}"),
            };
            match pair {
                Some(p) => merges.push(p),
                None => bail!("tokenizer.json merge {i} is empty"),
            }
        }
        let mut added = Vec::new();
        if let Some(list) = root.get("added_tokens").and_then(|a| a.as_array()) {
            for t in list {
                let (Some(content), Some(id)) = (
                    t.get("content").and_then(|c| c.as_str()),
                    t.get("id").and_then(|i| i.as_u64()),
                ) else {
                    bail!("tokenizer.json added token without content/id: {t}");
                };
                let Ok(id) = u32::try_from(id) else {
                    bail!("tokenizer.json added token {content:?} has id {id}, too large");
                };
                let special = t.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
                let normalized = t
                    .get("normalized")
                    .and_then(|s| s.as_bool())
                    .unwrap_or(!special);
                added.push((content.to_string(), id, special, normalized));
            }
        }
        // The start/end tokens must be base-vocabulary entries; take them from added_tokens
        // when model.vocab lacks them.
        let mut vocab = vocab;
        for (content, id, ..) in &added {
            if (content == START_TOKEN || content == END_TOKEN)
                && !vocab.iter().any(|(t, _)| t == content)
            {
                vocab.push((content.clone(), *id));
            }
        }
        Self::build(vocab, merges, added)
    }

    /// Builds the tokenizer from the contents of `vocab.json` and `merges.txt` (the files of
    /// transformers' `CLIPTokenizer`; `merges.txt` may start with a `#version` line).
    pub fn from_vocab_merges(vocab_json: &str, merges_txt: &str) -> Result<Self> {
        let root: serde_json::Value =
            serde_json::from_str(vocab_json).map_err(candle_core::Error::wrap)?;
        let Some(obj) = root.as_object() else {
            bail!("vocab.json is not a JSON object");
        };
        let vocab = parse_vocab_object(obj, "vocab.json")?;
        let mut merges = Vec::new();
        for (i, line) in merges_txt.lines().enumerate() {
            if let Some(pair) = parse_merge_line(line, i + 1)? {
                merges.push(pair);
            }
        }
        Self::build(vocab, merges, Vec::new())
    }

    /// Builds the 49,408-id CLIP tokenizer from open_clip's merges list
    /// (`bpe_simple_vocab_16e6.txt`, i.e. the decompressed `bpe_simple_vocab_16e6.txt.gz`),
    /// exactly as open_clip's `SimpleTokenizer` derives its vocabulary: the 256 byte tokens,
    /// their `</w>` forms, the joined pairs of merges 1..=48894 (line 0 is a header), then
    /// `<|startoftext|>`, `<|endoftext|>`.
    pub fn from_open_clip_bpe(merges_txt: &str) -> Result<Self> {
        let lines: Vec<&str> = merges_txt.split('\n').collect();
        if lines.len() < OPEN_CLIP_MERGES + 1 {
            bail!(
                "open_clip merges list has {} lines, expected at least {}",
                lines.len(),
                OPEN_CLIP_MERGES + 1
            );
        }
        let mut merges = Vec::with_capacity(OPEN_CLIP_MERGES);
        for (i, line) in lines[1..=OPEN_CLIP_MERGES].iter().enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
                _ => bail!("open_clip merges line {} does not parse: {line:?}", i + 2),
            }
        }
        let byte_encoder = bytes_to_unicode();
        let mut tokens: Vec<String> = open_clip_byte_order()
            .into_iter()
            .map(|b| byte_encoder[b as usize].to_string())
            .collect();
        let with_suffix: Vec<String> = tokens.iter().map(|t| format!("{t}{END_OF_WORD}")).collect();
        tokens.extend(with_suffix);
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push(START_TOKEN.to_string());
        tokens.push(END_TOKEN.to_string());
        let vocab = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        Self::build(vocab, merges, Vec::new())
    }

    /// NFC, whitespace runs to one space, char-wise lower case (transformers' CLIP normalizer).
    fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().collect();
        let collapsed = self.whitespace.replace_all(&nfc, " ");
        collapsed.chars().flat_map(char::to_lowercase).collect()
    }

    /// Splits `text` on the added tokens with the given `normalized` flag, leftmost-longest.
    /// Returns segments: `Err(id)` for a matched token, `Ok(text)` for the text between.
    fn split_added<'a>(
        &self,
        text: &'a str,
        normalized: bool,
    ) -> Vec<std::result::Result<&'a str, u32>> {
        let tokens: Vec<&AddedToken> = self
            .added
            .iter()
            .filter(|t| t.normalized == normalized)
            .collect();
        let mut out = Vec::new();
        if tokens.is_empty() {
            out.push(Ok(text));
            return out;
        }
        let mut seg_start = 0;
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            let best = tokens
                .iter()
                .filter(|t| rest.starts_with(t.pattern.as_str()))
                .max_by_key(|t| t.pattern.len());
            if let Some(t) = best {
                if seg_start < pos {
                    out.push(Ok(&text[seg_start..pos]));
                }
                out.push(Err(t.id));
                pos += t.pattern.len();
                seg_start = pos;
            } else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if seg_start < text.len() {
            out.push(Ok(&text[seg_start..]));
        }
        out
    }

    /// BPE of one pre-tokenized piece, appending its ids to `out`.
    fn bpe(&self, piece: &str, out: &mut Vec<u32>) {
        let mapped: Vec<char> = piece
            .bytes()
            .map(|b| self.byte_encoder[b as usize])
            .collect();
        let n = mapped.len();
        let mut word: Vec<u32> = Vec::with_capacity(n);
        let mut buf = String::new();
        for (i, c) in mapped.iter().enumerate() {
            buf.clear();
            buf.push(*c);
            if i + 1 == n {
                buf.push_str(END_OF_WORD);
            }
            // Unknown symbols become the unknown token (<|endoftext|>), as transformers does;
            // it cannot happen with a vocabulary that has all byte tokens.
            word.push(self.encoder.get(&buf).copied().unwrap_or(self.end_id));
        }
        loop {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(rank, id)| (rank, i, id))
                })
                .min_by_key(|&(rank, i, _)| (rank, i));
            let Some((_, at, merged)) = best else { break };
            let (first, second) = (word[at], word[at + 1]);
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        out.extend(word);
    }

    /// Pre-tokenizes and BPE-encodes normalized text (no added tokens in it).
    fn encode_normalized(&self, text: &str, out: &mut Vec<u32>) {
        for m in self.pattern.find_iter(text) {
            let piece = m.as_str();
            if piece == START_TOKEN || piece == END_TOKEN {
                // The byte-level GPT-2 split separates `<|`, the word and `|>`.
                let inner = &piece[2..piece.len() - 2];
                self.bpe("<|", out);
                self.bpe(inner, out);
                self.bpe("|>", out);
            } else {
                self.bpe(piece, out);
            }
        }
    }

    /// The ids of `text` without start/end tokens, padding or truncation.
    fn encode_body(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for seg in self.split_added(text, false) {
            match seg {
                Err(id) => out.push(id),
                Ok(raw) => {
                    let norm = self.normalize(raw);
                    for sub in self.split_added(&norm, true) {
                        match sub {
                            Err(id) => out.push(id),
                            Ok(s) => self.encode_normalized(s, &mut out),
                        }
                    }
                }
            }
        }
        out
    }

    /// Tokenizes `text`: `<|startoftext|>`, the text's ids, `<|endoftext|>`; no padding and
    /// no truncation (the result may be longer than [`MAX_LEN`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let body = self.encode_body(text);
        let mut ids = Vec::with_capacity(body.len() + 2);
        ids.push(self.start_id);
        ids.extend(body);
        ids.push(self.end_id);
        Ok(ids)
    }

    /// Tokenizes `text` into exactly `max_len` ids (77 for SD 1.x, see [`MAX_LEN`]): start
    /// token, at most `max_len - 2` text ids, end token, then the pad id.
    pub fn encode_padded(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        if max_len < 2 {
            bail!("max_len {max_len} leaves no room for the start and end tokens");
        }
        if max_len > MAX_PADDED_LEN {
            bail!("max_len {max_len} is above the limit {MAX_PADDED_LEN}");
        }
        let mut body = self.encode_body(text);
        body.truncate(max_len - 2);
        let mut ids = Vec::with_capacity(max_len);
        ids.push(self.start_id);
        ids.extend(body);
        ids.push(self.end_id);
        ids.resize(max_len, self.pad_id);
        Ok(ids)
    }

    /// Turns ids back into text as transformers' `decode(ids, skip_special_tokens=True)`
    /// does: special tokens are skipped, `</w>` becomes a space, the result is trimmed.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(Some(token)) = self.decoder.get(id as usize) else {
                bail!(
                    "unknown token id {id} (vocabulary size {})",
                    self.vocab_size()
                );
            };
            if self.added.iter().any(|t| t.id == id && t.special) {
                continue;
            }
            let mapped: Option<Vec<u8>> = token
                .chars()
                .map(|c| self.byte_decoder.get(&c).copied())
                .collect();
            match mapped {
                Some(b) => bytes.extend(b),
                None => bytes.extend(token.as_bytes()),
            }
        }
        let text = String::from_utf8_lossy(&bytes).replace(END_OF_WORD, " ");
        Ok(text.trim().to_string())
    }

    /// The id of a token string (vocabulary entry such as `"cat</w>"` or added token).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.added
            .iter()
            .find(|t| t.content == token)
            .map(|t| t.id)
            .or_else(|| self.encoder.get(token).copied())
    }

    /// The token string of an id, if any.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.decoder.get(id as usize).and_then(|t| t.as_deref())
    }

    /// Adds a placeholder token (textual inversion, e.g. `<vangogh-s3>`), matched as a whole
    /// before BPE wherever it occurs in the normalized text, as transformers' `add_tokens`
    /// does (so it is matched case-insensitively). Returns its id: the next free id (49408,
    /// 49409, ... for the CLIP vocabulary), or the existing id if it was added before. A token
    /// that is already in the base vocabulary is refused.
    pub fn add_token(&mut self, token: &str) -> Result<u32> {
        if let Some(t) = self.added.iter().find(|t| t.content == token) {
            return Ok(t.id);
        }
        if let Some(id) = self.encoder.get(token) {
            bail!("token {token:?} is already in the vocabulary (id {id})");
        }
        if token.trim().is_empty() {
            bail!("cannot add the empty or blank token {token:?}");
        }
        let id = u32::try_from(self.decoder.len()).map_err(candle_core::Error::wrap)?;
        self.register_added(token.to_string(), id, false, true)?;
        Ok(id)
    }

    /// Number of ids (base vocabulary plus added tokens): 49,408 for CLIP.
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// The `<|startoftext|>` id (49406 for CLIP).
    pub fn start_id(&self) -> u32 {
        self.start_id
    }

    /// The `<|endoftext|>` id (49407 for CLIP).
    pub fn end_id(&self) -> u32 {
        self.end_id
    }

    /// The padding id used by [`encode_padded`](Self::encode_padded).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Sets the padding id (default: the end token; some tokenizers pad with 0, `!`).
    pub fn set_pad_id(&mut self, id: u32) -> Result<()> {
        if self.token(id).is_none() {
            bail!(
                "pad id {id} is not a token id (vocabulary size {})",
                self.vocab_size()
            );
        }
        self.pad_id = id;
        Ok(())
    }
}

fn parse_vocab_object(
    obj: &serde_json::Map<String, serde_json::Value>,
    what: &str,
) -> Result<Vec<(String, u32)>> {
    let mut vocab = Vec::with_capacity(obj.len());
    for (token, id) in obj {
        let Some(id) = id.as_u64().and_then(|i| u32::try_from(i).ok()) else {
            bail!("{what}: token {token:?} has id {id}, not a u32");
        };
        vocab.push((token.clone(), id));
    }
    Ok(vocab)
}
