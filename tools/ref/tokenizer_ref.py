#!/usr/bin/env python3
"""Reference ids of the CLIP tokenizer (transformers `CLIPTokenizer`) for easel's parity tests.

Run from the repository root (no network needed):

    /work/venv/bin/python tools/ref/tokenizer_ref.py

1. Builds `vocab.json` + `merges.txt` from `/work/shared/data/clip/bpe_simple_vocab_16e6.txt.gz`
   exactly as open_clip's `SimpleTokenizer` builds its vocabulary: the 256 byte tokens (in
   `bytes_to_unicode` order), their `</w>` forms, the joined pairs of the first 48,894 merges
   (`merges[1:49152-256-2+1]`), then `<|startoftext|>`, `<|endoftext|>`: 49,408 ids. These are
   written to a temporary directory only (2 MB; the Rust test rebuilds them from the gz).
2. Makes transformers' `CLIPTokenizer` from them. In transformers >= 5 this is the
   tokenizers-backed tokenizer (the former "fast" one; the pure-Python slow class is gone):
   normalizer NFC + `\\s+` -> " " + lowercase, the CLIP split regex, byte-level, BPE with `</w>`.
   It is the tokenizer diffusers' Stable Diffusion pipelines load from a `tokenizer/` folder.
3. Tokenizes the strings of `cases()` with `max_length=77, padding="max_length",
   truncation=True` (pad = `<|endoftext|>` 49407, as in `openai/clip-vit-large-patch14`) and
   with a tokenizer that has `<vangogh>` added by `add_tokens` (id 49408), and writes
   `crates/easel-diffusion/tests/fixtures/tokenizer_cases.json`:
   `{"cases": [{"text", "ids", "decoded"}], "added_cases": [...], "added_token": ...}` where
   `decoded` is `tokenizer.decode(ids, skip_special_tokens=True)`.
4. Builds a small tokenizer (the byte tokens, their `</w>` forms, the first 2,000 merges and the
   two special tokens: 2,514 ids), saves it with `save_pretrained` (which writes the HF
   `tokenizer.json`) and copies that file to `tests/fixtures/tokenizer_small.json`, with its
   own reference ids in `tests/fixtures/tokenizer_small_cases.json`.

Read by `crates/easel-diffusion/tests/tokenizer_parity.rs`. It also compares the transformers
ids with a plain-Python port of open_clip's `SimpleTokenizer` BPE (without ftfy) and prints how
many cases agree (they differ only where normalization differs, e.g. final sigma or NFC).
"""
import gzip
import json
import random
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import regex as re
from transformers import CLIPTokenizer

GZ = Path("/work/shared/data/clip/bpe_simple_vocab_16e6.txt.gz")
FIXTURES = Path("crates/easel-diffusion/tests/fixtures")
MAX_LEN = 77
SMALL_MERGES = 2000


@lru_cache()
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(n) for n in cs]))


def open_clip_vocab_merges(n_merges=49152 - 256 - 2):
    """open_clip SimpleTokenizer.__init__ (bpe part)."""
    merges = gzip.open(GZ).read().decode("utf-8").split("\n")
    merges = merges[1 : n_merges + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    return {t: i for i, t in enumerate(vocab)}, merges


def write_vocab_merges(directory, vocab, merges):
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with open(directory / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


class OpenClipBpe:
    """open_clip's SimpleTokenizer encode, with `ftfy.fix_text`/html unescape left out."""

    pat = re.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        re.IGNORECASE,
    )

    def __init__(self, vocab, merges):
        self.encoder = vocab
        self.ranks = dict(zip(merges, range(len(merges))))
        self.byte_encoder = bytes_to_unicode()
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode_padded(self, text):
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in re.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        ids = [49406] + ids[: MAX_LEN - 2] + [49407]
        return ids + [49407] * (MAX_LEN - len(ids))


WORDS = (
    "a painting of the starry night over a quiet village in the style of vincent van gogh oil on canvas "
    "impasto thick brush strokes swirling sky cypress tree moonlight watercolor ink wash ukiyo-e hokusai "
    "great wave portrait of a woman with a pearl earring vermeer baroque chiaroscuro monet water lilies "
    "impressionism cubism picasso kandinsky abstract composition red blue yellow trending on artstation "
    "highly detailed 8k unreal engine octane render masterpiece best quality cinematic lighting sunset "
    "mountains lake reflection misty forest cat dog astronaut riding a horse on mars photorealistic"
).split()

HAND = [
    "",
    " ",
    "\n\t  \r\n",
    "a photo of a cat",
    "A Photo Of A CAT",
    "a painting in the style of Vincent van Gogh",
    "The Starry Night (1889), oil on canvas, 73.7 cm × 92.1 cm",
    "pi is 3.14159 and e is 2.71828",
    "1889",
    "in 2024, 10,000 people paid $1,234.56 for 50% off!!!",
    "0123456789",
    "I'm sure it's what they've said: we'll see, you'd know, they're here, don't",
    "IT'S HE'LL WE'VE THEY'RE I'M YOU'D",
    "rock'n'roll o'clock 'quoted' ''double''",
    "multiple   spaces    between\twords\n\nand\r\nnewlines",
    "   leading and trailing whitespace   ",
    "punctuation runs!!! ??? ... --- *** ### @@@ ;;; ::: ,,, (((( )))) [[[ ]]] {{{}}}",
    "(masterpiece:1.2), [best quality], {{ultra detailed}}, ((sharp focus))",
    "a, b; c: d. e! f? g- h_ i/ j\\ k| l~ m` n^ o& p* q+ r= s< t> u\" v' w%",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    "café crème brûlée naïve façade jalapeño São Paulo Zürich Ångström",
    "CAFÉ CRÈME BRÛLÉE",
    "cafe\u0301 (decomposed e + combining acute)",
    "日本の風景画、葛飾北斎の富嶽三十六景",
    "中国山水画 水墨画",
    "한국의 전통 회화",
    "Картина маслом в стиле Ван Гога",
    "ЗВЁЗДНАЯ НОЧЬ",
    "لوحة زيتية على طراز فان جوخ",
    "Ελληνική τέχνη ΟΔΥΣΣΕΑΣ",
    "हिन्दी चित्रकला",
    "ภาพวาดสีน้ำมัน",
    "emoji 🎨🖌️✨ art 🌻🌻 sunflowers 👩‍🎨",
    "🔥🔥🔥",
    "family 👨‍👩‍👧‍👦 flag 🇫🇷 skin 👍🏽",
    "math ∑ ∫ √ ∞ ≈ ≠ ± × ÷ ∂ Δ",
    "currency € £ ¥ ₹ ₿ ¢",
    "fullwidth ＡＢＣ １２３ ！",
    "ﬁ ligature and ½ fraction and ² superscript",
    "non\u00a0breaking\u2003em\u3000ideographic space",
    "zero\u200bwidth\u200dzwj\ufeffbom",
    "tab\tseparated\tvalues",
    "<|startoftext|>",
    "<|endoftext|>",
    "text with <|endoftext|> inside",
    "<|ENDOFTEXT|> uppercase special",
    "<|startoftext|>a photo<|endoftext|>",
    "İstanbul DİYARBAKIR",
    "straße STRASSE",
    "x" * 100,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 30 + " " + "b" * 30,
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40",
    "<vangogh>",
    "a painting of <vangogh>",
    "test_underscore snake_case CamelCase kebab-case",
    "v1.5 sd-v1-4 768x512 f/2.8 1/250s ISO100",
    "#hashtag @mention $money",
    "\u0000null\u0001ctrl\u007fdel",
    "\u00e9\u00e8\u00ea \u00c0\u00c1\u00c2",
    "Ǆ ǅ ǆ titlecase digraphs",
    "ＨＥＬＬＯ　ＷＯＲＬＤ",
    "\U0001d400\U0001d401 math bold",
    "naïve—em dash–en dash…ellipsis “quotes” ‘single’",
]


def cases():
    rng = random.Random(1889)
    out = list(HAND)
    # Random art prompts from the word list with assorted separators.
    seps = [" ", ", ", "  ", "\n", ",", " | ", "\t", ". "]
    for _ in range(110):
        n = rng.randint(1, 30)
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words = [w.capitalize() if rng.random() < 0.5 else w.upper() for w in words]
        text = words[0]
        for w in words[1:]:
            text += rng.choice(seps) + w
        out.append(text)
    # Over-long prompts (> 77 tokens).
    for _ in range(12):
        n = rng.randint(60, 140)
        out.append(", ".join(rng.choice(WORDS) for _ in range(n)))
    # Random unicode soup.
    pools = [
        "abcdefghijklmnopqrstuvwxyz ",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ ",
        "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿœšž ",
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюя ",
        "日本語中文字符漢字山水画風景 ",
        "🎨🖌️✨🌻🔥👍🏽😀🎉🌊🌙⭐ ",
        "αβγδεζηθικλμνξοπρστυφχψω ",
        "٠١٢٣٤٥٦٧٨٩ابتثجحخدذرزسشصضطظعغفقكلمنهوي ",
        "\t\n \u00a0\u2009 ",
    ]
    for _ in range(40):
        k = rng.randint(1, 3)
        pool = "".join(rng.sample(pools, k))
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 60))))
    # Dedupe, keep order.
    seen, uniq = set(), []
    for t in out:
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    return uniq


ADDED_CASES = [
    "<vangogh>",
    "a painting in the style of <vangogh>",
    "a painting in the style of <VanGogh>",
    "<vangogh><vangogh> twice",
    "prefix<vangogh>suffix",
    "a <vangogh>, starry night",
    "<vangogh-s3> is not added",
    "no placeholder at all",
]

SMALL_CASES = [
    "a photo of a cat",
    "the starry night, 1889",
    "In The Style Of <vangogh>",
    "café 日本 🎨",
    "multiple   spaces\tand\nnewlines",
    "",
]


def encode(tok, text):
    enc = tok(text, max_length=MAX_LEN, padding="max_length", truncation=True)
    ids = list(enc["input_ids"])
    return {"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)}


def main():
    FIXTURES.mkdir(parents=True, exist_ok=True)
    vocab, merges = open_clip_vocab_merges()
    assert len(vocab) == 49408, len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_vocab_merges(tmp, vocab, merges)
        tok = CLIPTokenizer(vocab=vocab, merges=merges)
        # Also load through the files, as from_pretrained would on a `tokenizer/` folder.
        tok_files = CLIPTokenizer.from_pretrained(str(tmp))

        texts = cases()
        results = [encode(tok, t) for t in texts]
        for r in results:
            assert encode(tok_files, r["text"])["ids"] == r["ids"], r["text"]
        open_clip = OpenClipBpe(vocab, merges)
        agree = [r for r in results if open_clip.encode_padded(r["text"]) == r["ids"]]
        differ = [r["text"] for r in results if open_clip.encode_padded(r["text"]) != r["ids"]]
        print(f"{len(results)} cases; open_clip-style BPE (no ftfy) agrees on {len(agree)}")
        for t in differ:
            print("  differs:", repr(t)[:100])

        added = CLIPTokenizer(vocab=vocab, merges=merges)
        n = added.add_tokens(["<vangogh>"])
        assert n == 1
        added_id = added.convert_tokens_to_ids("<vangogh>")
        added_results = [encode(added, t) for t in ADDED_CASES]

        (FIXTURES / "tokenizer_cases.json").write_text(
            "{\n"
            + f'"source": "tools/ref/tokenizer_ref.py (transformers CLIPTokenizer, max_length {MAX_LEN}, pad 49407)",\n'
            + f'"added_token": {json.dumps({"content": "<vangogh>", "id": added_id})},\n'
            + '"cases": [\n'
            + ",\n".join(json.dumps(r, ensure_ascii=False) for r in results)
            + '\n],\n"added_cases": [\n'
            + ",\n".join(json.dumps(r, ensure_ascii=False) for r in added_results)
            + "\n]\n}\n",
            encoding="utf-8",
        )

        # Small tokenizer.json for the loading test.
        svocab, smerges = open_clip_vocab_merges(SMALL_MERGES)
        small = CLIPTokenizer(vocab=svocab, merges=smerges)
        small.add_tokens(["<vangogh>"])
        small.save_pretrained(tmp / "small")
        shutil.copy(tmp / "small" / "tokenizer.json", FIXTURES / "tokenizer_small.json")
        small_results = [encode(small, t) for t in SMALL_CASES]
        (FIXTURES / "tokenizer_small_cases.json").write_text(
            json.dumps({"vocab_size": len(small), "cases": small_results}, ensure_ascii=False, indent=0) + "\n",
            encoding="utf-8",
        )
    print(f"wrote {FIXTURES}/tokenizer_cases.json ({len(results)} + {len(added_results)} cases), tokenizer_small.json")


if __name__ == "__main__":
    main()
