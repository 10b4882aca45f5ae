//! Parity of [`ClipTokenizer`] with transformers' `CLIPTokenizer`.
//!
//! The expected ids come from `tools/ref/tokenizer_ref.py` (run it from the repository root
//! to regenerate `tests/fixtures/tokenizer_cases.json`, `tokenizer_small.json` and
//! `tokenizer_small_cases.json`). The full 49,408-id tokenizer is built here from open_clip's
//! `shared/data/clip/bpe_simple_vocab_16e6.txt.gz` beside the checkout (as CI has it; set
//! `EASEL_CLIP_BPE` to use another copy). A missing file fails those tests rather than skipping
//! them, so a broken setup cannot pass silently.

mod common;

use std::io::Read;

use easel_diffusion::tokenizer::{ClipTokenizer, MAX_LEN};
use serde_json::Value;

use common::{fixture_path, read_json};

fn bpe_text() -> String {
    let path = std::env::var("EASEL_CLIP_BPE").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/clip/bpe_simple_vocab_16e6.txt.gz"
        )
        .to_string()
    });
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{path}: {e}; the full CLIP vocabulary comes from shared/ (or set EASEL_CLIP_BPE)")
    });
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .expect("gunzip open_clip merges");
    text
}

fn full_tokenizer() -> ClipTokenizer {
    ClipTokenizer::from_open_clip_bpe(&bpe_text()).expect("build from open_clip bpe")
}

fn ids_of(case: &Value) -> Vec<u32> {
    case["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

/// Checks every case; panics naming the first mismatching string.
fn check_cases(tok: &ClipTokenizer, cases: &[Value], what: &str) -> usize {
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = ids_of(case);
        let got = tok.encode_padded(text, MAX_LEN).expect("encode_padded");
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
            continue;
        }
        let decoded = tok.decode(&got).expect("decode");
        let want_decoded = case["decoded"].as_str().expect("decoded");
        if decoded != want_decoded {
            failures.push(format!(
                "decode of {text:?}\n  want {want_decoded:?}\n  got  {decoded:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} cases differ; first: {}",
        failures.len(),
        cases.len(),
        failures[0]
    );
    cases.len()
}

#[test]
fn parity_with_transformers_full_vocab() {
    let tok = full_tokenizer();
    assert_eq!(tok.vocab_size(), 49408);
    assert_eq!(tok.start_id(), 49406);
    assert_eq!(tok.end_id(), 49407);
    assert_eq!(tok.pad_id(), 49407);
    let fx = read_json("tokenizer_cases.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let n = check_cases(&tok, cases, "full vocab");
    eprintln!("{n} cases match transformers");
}

#[test]
fn parity_with_added_placeholder_token() {
    let mut tok = full_tokenizer();
    let fx = read_json("tokenizer_cases.json");
    let content = fx["added_token"]["content"].as_str().expect("content");
    let want_id = fx["added_token"]["id"].as_u64().expect("id") as u32;
    assert_eq!(tok.add_token(content).expect("add"), want_id);
    assert_eq!(tok.add_token(content).expect("add again"), want_id);
    assert_eq!(tok.token_id(content), Some(want_id));
    assert_eq!(tok.vocab_size(), 49409);
    check_cases(
        &tok,
        fx["added_cases"].as_array().expect("added_cases"),
        "added token",
    );
    // A second placeholder takes the next id.
    assert_eq!(tok.add_token("<vangogh-s3>").expect("add"), 49409);
    let ids = tok.encode("a <vangogh-s3> painting").expect("encode");
    assert_eq!(ids, vec![49406, 320, 49409, 3086, 49407]);
    // Tokens of the base vocabulary and blank tokens are refused.
    assert!(tok.add_token("cat</w>").is_err());
    assert!(tok.add_token("  ").is_err());
}

#[test]
fn vocab_merges_files_match_open_clip_bpe() {
    let text = bpe_text();
    let tok = ClipTokenizer::from_open_clip_bpe(&text).expect("build");
    // Write vocab.json + merges.txt as the reference script does, and load them.
    let mut vocab = serde_json::Map::new();
    for id in 0..tok.vocab_size() as u32 {
        let token = tok.token(id).expect("dense ids");
        vocab.insert(token.to_string(), Value::from(id));
    }
    let vocab_json = serde_json::to_string(&Value::Object(vocab)).expect("json");
    let mut merges_txt = String::from("#version: 0.2\n");
    for line in text.split('\n').skip(1).take(48894) {
        merges_txt.push_str(line);
        merges_txt.push('\n');
    }
    let from_files = ClipTokenizer::from_vocab_merges(&vocab_json, &merges_txt).expect("build");
    assert_eq!(from_files.vocab_size(), 49408);
    let fx = read_json("tokenizer_cases.json");
    check_cases(
        &from_files,
        fx["cases"].as_array().expect("cases"),
        "vocab.json + merges.txt",
    );
}

#[test]
fn tokenizer_json_from_transformers_save_pretrained() {
    let json = std::fs::read_to_string(fixture_path("tokenizer_small.json")).expect("read");
    let tok = ClipTokenizer::from_tokenizer_json(&json).expect("load tokenizer.json");
    let fx = read_json("tokenizer_small_cases.json");
    assert_eq!(
        tok.vocab_size() as u64,
        fx["vocab_size"].as_u64().expect("vocab_size")
    );
    assert_eq!(tok.token_id("<vangogh>"), Some(2514));
    check_cases(
        &tok,
        fx["cases"].as_array().expect("cases"),
        "tokenizer.json",
    );

    // The older merges format ("a b" strings) loads to the same tokenizer.
    let mut root: Value = serde_json::from_str(&json).expect("json");
    let merges = root["model"]["merges"].as_array().expect("merges").clone();
    let as_strings: Vec<Value> = merges
        .iter()
        .map(|m| {
            let pair = m.as_array().expect("pair");
            Value::from(format!(
                "{} {}",
                pair[0].as_str().expect("a"),
                pair[1].as_str().expect("b")
            ))
        })
        .collect();
    root["model"]["merges"] = Value::from(as_strings);
    let old = ClipTokenizer::from_tokenizer_json(&root.to_string()).expect("load old format");
    check_cases(
        &old,
        fx["cases"].as_array().expect("cases"),
        "tokenizer.json, string merges",
    );
}

#[test]
fn decode_of_encode_is_the_cleaned_lowercase_text() {
    let tok = full_tokenizer();
    for text in [
        "a photo of a cat",
        "  A Painting   in the STYLE\tof\nVincent van Gogh  ",
        "masterpiece best quality highly detailed oil on canvas",
        "supercalifragilisticexpialidocious pneumonoultramicroscopic",
        "",
    ] {
        let cleaned = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let ids = tok.encode(text).expect("encode");
        assert_eq!(tok.decode(&ids).expect("decode"), cleaned, "{text:?}");
    }
}

#[test]
fn padding_truncation_and_errors() {
    let mut tok = full_tokenizer();
    let long = "cat ".repeat(200);
    let ids = tok.encode(&long).expect("encode");
    assert_eq!(ids.len(), 202);
    let padded = tok.encode_padded(&long, MAX_LEN).expect("padded");
    assert_eq!(padded.len(), 77);
    assert_eq!(padded[0], 49406);
    assert_eq!(padded[76], 49407);
    assert_eq!(padded[75], tok.token_id("cat</w>").expect("cat"));

    tok.set_pad_id(0).expect("pad 0");
    let padded = tok.encode_padded("a cat", MAX_LEN).expect("padded");
    assert_eq!(&padded[..4], &[49406, 320, 2368, 49407]);
    assert!(padded[4..].iter().all(|&i| i == 0));
    assert!(tok.set_pad_id(49408).is_err());

    assert!(tok.encode_padded("x", 1).is_err());
    assert!(tok.encode_padded("x", usize::MAX).is_err());
    assert_eq!(
        tok.encode_padded("a cat", 2).expect("2"),
        vec![49406, 49407]
    );
    let err = tok.decode(&[320, 99999]).expect_err("unknown id");
    assert!(err.to_string().contains("99999"), "{err}");
}

#[test]
fn malformed_inputs_are_errors_not_panics() {
    let vocab = r#"{"a": 0, "b": 1, "ab": 2, "a</w>": 3, "b</w>": 4, "<|startoftext|>": 5, "<|endoftext|>": 6}"#;
    let err =
        ClipTokenizer::from_vocab_merges(vocab, "#version: 0.2\na b c\n").expect_err("3 parts");
    assert!(err.to_string().contains("a b c"), "{err}");
    let err = ClipTokenizer::from_vocab_merges(vocab, "a x\n").expect_err("unknown");
    assert!(err.to_string().contains("\"x\""), "{err}");
    assert!(ClipTokenizer::from_vocab_merges("[1, 2]", "").is_err());
    assert!(ClipTokenizer::from_vocab_merges(r#"{"a": -1}"#, "").is_err());
    assert!(ClipTokenizer::from_vocab_merges(r#"{"a": 0}"#, "").is_err()); // no specials
    assert!(ClipTokenizer::from_vocab_merges(r#"{"a": 0, "b": 0}"#, "").is_err());
    assert!(ClipTokenizer::from_tokenizer_json("{}").is_err());
    assert!(ClipTokenizer::from_tokenizer_json(r#"{"model": {"type": "WordPiece"}}"#).is_err());
    assert!(ClipTokenizer::from_open_clip_bpe("header\na b\n").is_err());

    // A tiny tokenizer still handles any text (unknown bytes become <|endoftext|>).
    let tok = ClipTokenizer::from_vocab_merges(vocab, "a b\n").expect("tiny");
    assert_eq!(tok.encode("ab ba").expect("encode"), vec![5, 0, 4, 1, 3, 6]);
    for text in [
        "",
        "\u{0}",
        "日本 🎨 <|endoftext|> <|ENDOFTEXT|>",
        "\u{FFFF}\u{10FFFF}",
    ] {
        tok.encode_padded(text, MAX_LEN).expect("no panic");
    }
}
