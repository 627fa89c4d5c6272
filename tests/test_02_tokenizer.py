"""Stage 02: byte-level BPE (against a naive reference, hand-computed merges, tiktoken, GPT-2), its
numpy fast path against the readable loops, WordPiece and Unigram on hand-checked examples, the
commands' artifacts and printed tables, and a table of bad inputs run as a user would."""

import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bpe import BPETokenizer
from bpe_merges import train_merges, train_merges_naive
from bpe_cuts import cut_table, distinct_sub_pieces, encode_texts, sub_piece_starts
from bpe_fast import (
    descending,
    encode_pieces,
    encode_pieces_flat,
    merge_table,
    train_merges_fast,
    utf8_joined,
)
from common.cli import UserError
from common.runs import check_artifact, write_manifest
from pretokenize import GPT2_PATTERN, GPT4_PATTERN, SPECIAL_TOKENS, word_counts_of
from train_tokenizer import main as bpe_main
from unigram import UnigramConfig, UnigramTokenizer, train_unigram, viterbi
from unigram import main as unigram_main
from wordpiece import SPECIALS, WordPieceTokenizer, train_wordpiece
from wordpiece import main as wordpiece_main

SAMPLES = {
    "english": "The quick brown fox didn't jump over 12345 lazy dogs.\n\n  Then it   slept.",
    "chinese": "贾宝玉笑道：“我送妹妹一妙字，莫若‘颦颦’二字极妙。”",
    "emoji": "ok 👍🏽 family: 👨‍👩‍👧 flags 🇨🇳🇺🇸 done",
    "code": "def f(x):\n    return {'a': x ** 2}  # square\n\tprint(f(3))\r\n",
}


def corpus(n_docs=300, seed=0):
    """A small deterministic mixed corpus: English sentences, Chinese, code, some noise."""
    rng = random.Random(seed)
    words = "the a cat dog sat on mat and ran to big small house tree quickly slowly said hello world".split()
    docs = []
    for i in range(n_docs):
        kind = i % 4
        if kind == 0:
            docs.append(" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))).capitalize() + ".")
        elif kind == 1:
            docs.append(
                "".join(
                    rng.choice("我们你他的是在有一个人这中大为上们来说国到")
                    for _ in range(rng.randint(5, 40))
                )
                + "。"
            )
        elif kind == 2:
            docs.append(f"def f{i}(x):\n    return x * {rng.randint(0, 999)} + {rng.choice(words)!r}\n")
        else:
            docs.append(
                f"{rng.choice(words)} {rng.randint(0, 10**6)}, {rng.choice(words)}! {SAMPLES['emoji']}"
            )
    return docs


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(corpus(), 600)


# ---------------------------------------------------------------- BPE training
def test_hand_computed_merges():
    # words: low x5, lower x2, newest x6 (each a document, so no leading space).
    # counts: w e 8 -> merge "we". Then l o 7 -> "lo". Then (n,e) (e,we) (we,s) (s,t) all 6: the
    # tie-break takes the greatest (left, right) bytes: "we" -> "wes". Then (n,e) (e,wes) (wes,t)
    # tie at 6 -> "west". Then (n,e) vs (e,west) at 6 -> "n" > "e" -> "ne".
    texts = ["low"] * 5 + ["lower"] * 2 + ["newest"] * 6
    t = BPETokenizer.train(texts, 256 + 5 + len(SPECIAL_TOKENS))
    assert [t.vocab[256 + k] for k in range(5)] == [b"we", b"lo", b"wes", b"west", b"ne"]
    assert (
        t.merges[0] == (ord("w"), ord("e"))
        and t.merges[2] == (256, ord("s"))
        and t.merges[4] == (ord("n"), ord("e"))
    )
    assert t.special_tokens["<|endoftext|>"] == 261 and t.vocab_size == 267 and t.eot_id == 261
    assert [t.vocab[i] for i in t.encode("newest lower")] == [b"ne", b"west", b" ", b"lo", b"we", b"r"]


def test_tie_break_prefers_greatest_bytes():
    wc = Counter({b"ab": 3, b"cd": 3, b"ef": 2})
    assert train_merges(wc, 2) == [(ord("c"), ord("d")), (ord("a"), ord("b"))]
    assert train_merges_naive(wc, 2) == train_merges(wc, 2)


def test_incremental_trainer_equals_naive():
    wc = word_counts_of(corpus(200, seed=1), GPT4_PATTERN, SPECIAL_TOKENS)
    assert train_merges(wc, 150) == train_merges_naive(wc, 150)


def test_incremental_trainer_equals_naive_on_real_text(shared_data):
    text = (shared_data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:30000]
    wc = word_counts_of([text], GPT2_PATTERN)
    assert train_merges(wc, 120) == train_merges_naive(wc, 120)


def test_specials_are_not_merged_across():
    t = BPETokenizer.train(["ab<|endoftext|>ab<|endoftext|>ab"] * 5, 256 + 3 + len(SPECIAL_TOKENS))
    assert all(b"<" not in t.vocab[256 + k] and b"|" not in t.vocab[256 + k] for k in range(len(t.merges)))


def random_texts(rng, n=12):
    """Short texts that stress the pair bookkeeping: runs ("aaaa", overlapping pairs), repeats
    ("abab", adjacent occurrences), multi-byte characters, spaces that start new pre-tokens."""
    alphabet = rng.choice(["ab", "aab ", "ab 你好", "a你a你 b", "xyz\n\t 1 22 333"])
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.mark.parametrize("few", [0, 10**9], ids=["all at once", "one by one"])
@pytest.mark.parametrize("seed", range(8))
def test_array_trainer_equals_readable_and_naive(seed, few, monkeypatch):
    import bpe_fast

    monkeypatch.setattr(bpe_fast, "FEW", few)  # every merge through one of its two paths
    rng = random.Random(seed)
    wc = word_counts_of(random_texts(rng), GPT4_PATTERN)
    n = rng.randint(1, 80)
    assert train_merges_fast(wc, n) == train_merges(wc, n) == train_merges_naive(wc, n)


def test_array_trainer_equals_readable_on_real_text(shared_data):
    for name, n_chars, n_merges in (("hongloumeng.txt", 30_000, 400), ("tinyshakespeare.txt", 50_000, 300)):
        text = (shared_data / "text" / name).read_text(encoding="utf-8")[:n_chars]
        wc = word_counts_of([text], GPT4_PATTERN, SPECIAL_TOKENS)
        assert train_merges_fast(wc, n_merges) == train_merges(wc, n_merges), name


def test_descending_orders_bytes_from_greatest():
    rng = random.Random(0)
    words = [b"", b"a", b"ab", b"abc", b"ab\x00", b"ab\xff", b"\xff", b"\x00"]
    words += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 4))) for _ in range(200)]
    assert sorted(words, key=descending) == sorted(words, reverse=True)


# ---------------------------------------------------------------- encoding and decoding
@pytest.mark.parametrize("name", list(SAMPLES))
def test_round_trip(tok, name):
    ids = tok.encode(SAMPLES[name])
    assert tok.decode(ids) == SAMPLES[name]
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_round_trip_random_bytes(tok):
    rng = random.Random(0)
    for _ in range(20):
        s = bytes(rng.randrange(256) for _ in range(200)).decode("utf-8", errors="replace")
        assert tok.decode(tok.encode_ordinary(s)) == s


def test_decode_partial_character_replaced_only_at_the_end(tok):
    ids = [tok.byte_ids[b] for b in "你".encode()]
    assert tok.decode(ids[:2]) == "\ufffd"
    assert tok.decode(ids[:2] + ids[2:]) == "你"  # bytes joined first, decoded once


def test_special_tokens(tok):
    text = "hello<|endoftext|>world<|user|>"
    ids = tok.encode(text, allowed_special="all")
    assert tok.special_tokens["<|endoftext|>"] in ids and ids[-1] == tok.special_tokens["<|user|>"]
    assert tok.decode(ids) == text
    with pytest.raises(UserError, match="<\\|user\\|>"):
        tok.encode(text, allowed_special={"<|endoftext|>"})
    ordinary = tok.encode_ordinary(text)
    assert not set(ordinary) & set(tok.special_tokens.values()) and tok.decode(ordinary) == text
    assert list(tok.special_tokens) == SPECIAL_TOKENS


def test_longest_special_token_wins():
    t = BPETokenizer.train(["abc abc"], 256 + 2 + 2, special_tokens=["<|a|>", "<|a|><|b|>"])
    ids = t.encode("x<|a|><|b|>y<|a|>", allowed_special="all")
    assert ids[1] == t.special_tokens["<|a|><|b|>"] and ids[3] == t.special_tokens["<|a|>"]


def test_matches_tiktoken_with_same_ranks(tok):
    enc = tok.to_tiktoken()
    for doc in corpus(400, seed=2) + list(SAMPLES.values()):
        assert tok.encode_ordinary(doc) == enc.encode_ordinary(doc)
    text = "a<|endoftext|>b<|assistant|>"
    assert tok.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")


def test_matches_tiktoken_on_generated_corpus():
    from bench_bpe import generated_corpus  # 01_data's synthetic world, all four domains

    docs = generated_corpus(150_000)
    t = BPETokenizer.train(docs[: len(docs) // 2], 1000)
    enc = t.to_tiktoken()
    for doc in docs:  # half of them unseen in training
        assert t.encode_ordinary(doc) == enc.encode_ordinary(doc)
        assert t.decode(t.encode_ordinary(doc)) == doc


def test_fast_encoder_equals_per_piece_reference(tok):
    rng = random.Random(1)
    texts = corpus(300, seed=6) + list(SAMPLES.values())
    texts += [
        bytes(rng.randrange(256) for _ in range(300)).decode("utf-8", errors="replace") for _ in range(30)
    ]
    pieces = sorted({w.encode("utf-8") for t in texts for w in tok._pat.findall(t)}) + [b"", b"a", b"\xe4"]
    assert len(pieces) > 100  # bpe_pieces takes the array path from 100 pieces on
    assert tok.bpe_pieces(pieces) == [tok.bpe_piece(p) for p in pieces]
    assert encode_pieces(pieces[:3], tok.byte_ids, merge_table(tok.ranks)) == [
        tok.bpe_piece(p) for p in pieces[:3]
    ]
    tok._cache.clear()
    assert tok.encode_ordinary_batch(texts) == [
        [i for w in tok._pat.findall(t) for i in tok.bpe_piece(w.encode())] for t in texts
    ]


def test_fast_encoder_groups_and_dense_table_change_no_id(tok):
    """encode_pieces_flat merges groups of similar-length pieces (CHUNK_BYTES) and, for a small
    vocabulary, reads pair ranks from a dense table: tiny groups, one group, and the binary search
    all give the per-piece reference's ids."""
    rng = random.Random(2)
    texts = corpus(200, seed=9) + ["红楼梦第一回甄士隐梦幻识通灵贾雨村风尘怀闺秀" * 3]
    pieces = list(dict.fromkeys(w.encode("utf-8") for t in texts for w in tok._pat.findall(t)))
    rng.shuffle(pieces)
    want = [tok.bpe_piece(p) for p in pieces]
    table = merge_table(tok.ranks)
    assert table[4] is not None  # 600 tokens: dense
    searched = (*table[:4], None)
    for t, chunk in ((table, 7), (table, 1 << 30), (searched, 50), (searched, None)):
        ids, offsets, lengths = encode_pieces_flat(pieces, tok.byte_ids, t, chunk)
        assert [ids[o : o + m].tolist() for o, m in zip(offsets, lengths)] == want


def test_utf8_joined_equals_one_encode_per_string():
    """utf8_joined counts each string's UTF-8 bytes from its code points (1 to 4 bytes, empty strings
    too) and gives the same bytes as encoding each string on its own."""
    rng = random.Random(5)
    alphabet = "ab é ß 中文红楼 😀𝄞\n"
    strings = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(6))) for _ in range(300)]
    raw, lengths = utf8_joined(strings)
    assert raw.tobytes() == "".join(strings).encode("utf-8")
    assert lengths.tolist() == [len(s.encode("utf-8")) for s in strings]


def test_cold_cache_path_equals_reference_on_random_text(tok):
    """An empty cache sends any text of 1000+ pre-tokens through encode_texts (few distinct ones
    included); random characters from several scripts give the per-piece reference's ids, cold and warm."""
    rng = random.Random(11)
    alphabet = "the cat sat. 红楼梦甄士隐贾雨村，。 é😀 0123\n"
    texts = ["".join(rng.choice(alphabet) for _ in range(3000)), "ab " * 1000]
    want = [[i for w in tok._pat.findall(t) for i in tok.bpe_piece(w.encode())] for t in texts]
    for t, ids in zip(texts, want):
        tok._cache.clear()
        assert tok.encode_ordinary(t) == ids
        assert tok.encode_ordinary(t) == ids  # warm: from the cache


def test_fast_encoder_equals_reference_on_real_chinese(shared_data):
    text = (shared_data / "text" / "hongloumeng.txt").read_text(encoding="utf-8")[:60_000]
    t = BPETokenizer.train([text[:40_000]], 1000)  # the last third is unseen in training
    t.cache_size = 1000  # the cache overflows: cleared and refilled
    ids = t.encode_ordinary(text)
    assert ids == [i for w in t._pat.findall(text) for i in t.bpe_piece(w.encode())]
    assert ids == t.to_tiktoken().encode_ordinary(text) and t.decode(ids) == text


def test_encode_iterable_equals_encode(tok, tmp_path):
    text = "\n".join(corpus(100, seed=3)) + "\nend.<|endoftext|>\nNext 42\n\n  x"
    path = tmp_path / "doc.txt"
    path.write_text(text, encoding="utf-8")
    with open(path, encoding="utf-8") as f:
        streamed = list(tok.encode_iterable(f, allowed_special="all", buffer_chars=64))
    assert streamed == tok.encode(text, allowed_special="all")


def test_save_load_same_ids(tok, tmp_path):
    tok.save(tmp_path / "t")
    loaded = BPETokenizer.load(tmp_path / "t")
    text = " ".join(SAMPLES.values())
    assert loaded.encode(text) == tok.encode(text) and loaded.special_tokens == tok.special_tokens
    d = json.loads((tmp_path / "t" / "tokenizer.json").read_text())
    d["merges"][3] = d["merges"][4]
    (tmp_path / "t" / "tokenizer.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="does not match its vocab"):
        BPETokenizer.load(tmp_path / "t")
    (tmp_path / "t" / "tokenizer.json").write_text(json.dumps(d)[:100])  # truncated
    with pytest.raises(
        UserError, match=r"corrupt or truncated.*rerun `python 02_tokenizer/train_tokenizer.py --data"
    ):
        BPETokenizer.load(tmp_path / "t")
    (tmp_path / "t" / "tokenizer.json").write_text(json.dumps({**d, "vocab": {"x": "zz"}}))
    with pytest.raises(UserError, match=r"not a usable tokenizer \(ValueError.*rerun"):
        BPETokenizer.load(tmp_path / "t")


@pytest.mark.parametrize(
    "cls, filename, fmt, script",
    [
        (BPETokenizer, "tokenizer.json", "bpe-v1", "train_tokenizer.py"),
        (WordPieceTokenizer, "wordpiece.json", "wordpiece-v1", "wordpiece.py"),
        (UnigramTokenizer, "unigram.json", "unigram-v1", "unigram.py"),
    ],
    ids=["bpe", "wordpiece", "unigram"],
)
def test_every_load_names_the_command_to_rerun(tmp_path, cls, filename, fmt, script):
    folder = tmp_path / "run" / "saved"
    folder.mkdir(parents=True)
    rerun = rf"rerun `python 02_tokenizer/{script} --data .*run`"
    for content, problem in (
        (None, "missing"),
        ('{"format": ', r"corrupt or truncated \(JSONDecodeError\)"),
        ('{"format": "other"}', rf"not a usable tokenizer \(not a {fmt} file\)"),
        (json.dumps({"format": fmt}), r"not a usable tokenizer \(KeyError"),
        (
            json.dumps(
                {
                    "format": fmt,
                    "vocab": [],
                    "log_probs": {},
                    "max_word_chars": 1,
                    "max_piece_chars": 1,
                    "merges": [],
                    "special_tokens": {},
                    "pattern": "x",
                }
            ),
            r"not a usable tokenizer \((ValueError|UserError)?.*",
        ),
    ):
        if content is not None:
            (folder / filename).write_text(content)
        with pytest.raises(UserError, match=rf"{filename}: {problem}.*; {rerun}"):
            cls.load(folder)


# ---------------------------------------------------------------- GPT-2 compatibility
@pytest.fixture(scope="module")
def gpt2():
    from conftest import SHARED_DATA

    d = SHARED_DATA / "tokenizer"
    if not (d / "gpt2_vocab.json").is_file():
        pytest.skip("GPT-2 files absent")
    return BPETokenizer.from_gpt2(d / "gpt2_vocab.json", d / "gpt2_merges.txt")


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.eot_id == 50256 and gpt2.vocab_size == 50257


def test_gpt2_matches_tiktoken_on_real_text(gpt2, shared_data):
    enc = gpt2.to_tiktoken("gpt2")
    for path in sorted((shared_data / "text").glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        assert gpt2.encode_ordinary(text) == enc.encode_ordinary(text), path.name
    for doc in corpus(200, seed=4) + list(SAMPLES.values()):
        assert gpt2.encode_ordinary(doc) == enc.encode_ordinary(doc)


def test_gpt2_mismatched_merges_file(tmp_path, shared_data):
    d = shared_data / "tokenizer"
    lines = (d / "gpt2_merges.txt").read_text(encoding="utf-8").splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (tmp_path / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(UserError, match="does not match its vocab"):
        BPETokenizer.from_gpt2(d / "gpt2_vocab.json", tmp_path / "merges.txt")


# ---------------------------------------------------------------- bad input
def test_bad_input_errors(tok):
    with pytest.raises(UserError, match="too small for BPE"):
        BPETokenizer.train(["abc"], 256 + len(SPECIAL_TOKENS))  # no room for a merge
    with pytest.raises(UserError, match="not a valid regex"):
        BPETokenizer.train(["abc"], 300, pattern="(?<")
    with pytest.raises(UserError, match="empty"):
        BPETokenizer.train(["", ""], 300)
    with pytest.raises(UserError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(UserError, match="not a special token"):
        tok.encode("x", allowed_special={"<|nope|>"})


# ---------------------------------------------------------------- WordPiece and Unigram
def test_wordpiece_hand_checked():
    # hug x10, pug x5, pun x12, bun x4, hugs x5. Symbol counts: h 15, p 17, b 4, ##u 36, ##g 20,
    # ##n 16, ##s 5. Scores c(ab)/(c(a)c(b)): (##g,##s) = 5/(20*5) = 1/20 beats every other pair
    # (all 1/36). Next all tie at 1/36; the greatest (a, b) strings win: (p, ##u) -> "pu". Then
    # (h,##u) = 15/(15*19), (##u,##gs) = 5/(19*5), (b,##u) = 4/(4*19) tie at 1/19 -> "h" wins -> "hu".
    words = Counter({"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5})
    vocab = train_wordpiece(words, len(SPECIALS) + 7 + 3)
    assert vocab[-3:] == ["##gs", "pu", "hu"]
    wp = WordPieceTokenizer(vocab)
    assert wp.tokenize("hugs bun mug") == ["hu", "##gs", "b", "##u", "##n", "[UNK]"]
    assert wp.decode(wp.encode("hugs pun")) == "hugs pun"


def test_wordpiece_trains_on_mixed_corpus():
    wp = WordPieceTokenizer.train(corpus(), 300, min_pair_count=1)
    assert wp.vocab_size == 300
    assert (
        WordPieceTokenizer.train(corpus(), 300, min_pair_count=10**6).vocab_size < 300
    )  # no pair that frequent
    assert wp.tokenize("我们") == ["我", "们"]  # each CJK character is its own word, as in BERT
    with pytest.raises(UserError, match="empty"):
        WordPieceTokenizer.train([" "], 300)


def test_unigram_viterbi_hand_checked():
    # "▁ab": ▁|a|b = .1*.2*.2 = .004, ▁|ab = .1*.4 = .04, ▁a|b = .3*.2 = .06 (best).
    import math

    logp = {
        "▁": math.log(0.1),
        "a": math.log(0.2),
        "b": math.log(0.2),
        "▁a": math.log(0.3),
        "ab": math.log(0.4),
    }
    pieces, score = viterbi("▁ab", logp, 8)
    assert pieces == ["▁a", "b"] and score == pytest.approx(math.log(0.06))
    assert viterbi("▁ax", logp, 8) == (None, -math.inf)


def test_unigram_learns_frequent_words_and_chinese():
    texts = ["hello world hello there"] * 50 + ["我爱北京天安门我爱北京"] * 50 + ["xyz"]
    cfg = UnigramConfig(max_piece_chars=6)
    logp = train_unigram(Counter(w for t in texts for w in ("▁" + x for x in t.split())), 28, cfg)
    # 19 distinct characters; the other pieces go to whole frequent words and Chinese multi-character
    # pieces found with no word segmentation (Viterbi prefers few, likely pieces).
    assert len(logp) <= 27 and "▁hello" in logp and "▁world" in logp
    assert any(len(p) >= 2 and "北" in p for p in logp)
    assert all(c in logp for c in "我爱北京天安门xyz")  # every seen character survives pruning
    uni = UnigramTokenizer(logp, cfg.max_piece_chars)
    assert uni.decode(uni.encode("hello world 我爱北京")) == "hello world 我爱北京"
    assert uni.tokenize("hello q") == ["▁hello", "▁", "<unk>"]


# ---------------------------------------------------------------- command line: artifacts and tables
KINDS = [("stories", "en"), ("knowledge", "zh"), ("code", "en"), ("dialog", "en")]
TABLE_HEADER = "| tokenizer | vocab_size | train_s | english | chinese | code | all |"


def write_run(root, docs_train, docs_val):
    (root / "data").mkdir(parents=True)
    for split, docs in (("train", docs_train), ("val", docs_val)):
        with open(root / "data" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, (text, domain, lang) in enumerate(docs):
                f.write(
                    json.dumps({"id": f"{split}{i}", "domain": domain, "lang": lang, "text": text}) + "\n"
                )
    write_manifest(root / "data", stage="01_data", command="(test data)", config={})


def run_docs():
    docs = [(text, *KINDS[i % 4]) for i, text in enumerate(corpus(120, seed=5))]
    return docs[:100], docs[100:]


def file_hashes(root):
    """{relative path: sha256} of every artifact file under root (hidden lock and temp files aside)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def val_bytes_per_token(encode, val_docs):
    return round(
        sum(len(t.encode("utf-8")) for t, _, _ in val_docs) / sum(len(encode(t)) for t, _, _ in val_docs), 3
    )


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A run folder with data/ and BPE's tokenizer/ and tokens/ (vocab 300), made once; tests copy it."""
    root = tmp_path_factory.mktemp("base") / "run"
    write_run(root, *run_docs())
    bpe_main(["--data", str(root), "--vocab-size", "300"])
    return root


def test_bpe_cli_writes_checked_artifacts_and_prints_the_table(tmp_path, capsys):
    train_docs, val_docs = run_docs()
    run = tmp_path / "run"
    write_run(run, train_docs, val_docs)
    bpe_main(["--data", str(run), "--vocab-size", "400"])
    out = capsys.readouterr().out
    tok = BPETokenizer.load(run / "tokenizer")
    assert tok.vocab_size == 400
    # the table printed is the one saved, and its numbers are what the saved tokenizer gives
    outcome = json.loads((run / "tokenizer" / "outcome.json").read_text())
    assert TABLE_HEADER in out and outcome["table"] in out and outcome["table"].startswith(TABLE_HEADER)
    row = outcome["rows"][0]
    assert row["tokenizer"] == "ours (BPE)" and row["vocab_size"] == 400
    assert row["all"] == val_bytes_per_token(tok.encode_ordinary, val_docs)
    assert {"english", "chinese", "code"} <= set(row)
    assert (run / "tokenizer" / "bytes_per_token.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # manifests: complete, undamaged, current up the chain; tokens/ was made from data/ and tokenizer/
    tokens_manifest = check_artifact(run / "tokens", made_by="(test)")
    tok_manifest = json.loads((run / "tokenizer" / "manifest.json").read_text())
    assert set(tok_manifest["files"]) == {"tokenizer.json", "outcome.json", "bytes_per_token.png"}
    assert tok_manifest["command"].startswith("python 02_tokenizer/train_tokenizer.py --data")
    assert tok_manifest["config"] == {"vocab_size": 400, "pattern": "gpt4"}
    assert set(tokens_manifest["inputs"]) == {"../data", "../tokenizer"}
    assert tokens_manifest["inputs"]["../tokenizer"]["id"] == tok_manifest["id"]
    assert set(tokens_manifest["files"]) == {"train.bin", "val.bin", "meta.json"}
    # the shards: every document, <|endoftext|> after each, and the counts 04 reads
    meta = json.loads((run / "tokens" / "meta.json").read_text())
    assert meta["vocab_size"] == 400 and meta["dtype"] == "uint16" and meta["eot_id"] == tok.eot_id
    for split, docs in (("train", train_docs), ("val", val_docs)):
        ids = np.fromfile(run / "tokens" / f"{split}.bin", dtype=np.uint16)
        assert len(ids) == meta["n_tokens"][split] and (ids == tok.eot_id).sum() == len(docs)
        assert tok.decode(ids.tolist()) == "".join(t + "<|endoftext|>" for t, _, _ in docs)
        assert meta["n_bytes"][split] == sum(len(t.encode("utf-8")) for t, _, _ in docs)
    assert f"tokens: {meta['n_tokens']}" in out


@pytest.mark.parametrize(
    "main, folder, cls, saved, args",
    [
        (
            wordpiece_main,
            "wordpiece",
            WordPieceTokenizer,
            "wordpiece.json",
            ["--vocab-size", "400", "--min-pair-count", "2"],
        ),
        (unigram_main, "unigram", UnigramTokenizer, "unigram.json", ["--vocab-size", "300"]),
    ],
    ids=["wordpiece", "unigram"],
)
def test_wordpiece_and_unigram_write_their_own_folder(
    base_run, tmp_path, capsys, main, folder, cls, saved, args
):
    run = shutil.copytree(base_run, tmp_path / "run")
    bpe_artifacts = file_hashes(run)
    main(["--data", str(run), *args])
    out = capsys.readouterr().out
    assert file_hashes(run / "tokenizer") == {
        k[len("tokenizer/") :]: v for k, v in bpe_artifacts.items() if k.startswith("tokenizer/")
    }  # BPE's folder untouched
    assert {k: v for k, v in file_hashes(run).items() if not k.startswith(folder)} == bpe_artifacts
    manifest = check_artifact(run / folder, made_by="(test)")
    assert set(manifest["files"]) == {saved, "outcome.json", "bytes_per_token.png"}
    assert set(manifest["inputs"]) == {"../data", "../tokenizer"}  # compared with the run's BPE
    outcome = json.loads((run / folder / "outcome.json").read_text())
    assert outcome["table"] in out and TABLE_HEADER in out
    names = [r["tokenizer"] for r in outcome["rows"]]
    assert names[:2] == [cls.__name__.replace("Tokenizer", ""), "ours (BPE, run/tokenizer)"]
    loaded = cls.load(run / folder)  # the saved vocabulary gives the numbers in the table
    _, val_docs = run_docs()
    assert outcome["rows"][0]["all"] == val_bytes_per_token(loaded.encode, val_docs)
    assert outcome["rows"][0]["vocab_size"] == loaded.vocab_size <= int(args[1])
    assert outcome["rows"][1]["all"] == val_bytes_per_token(
        BPETokenizer.load(run / "tokenizer").encode_ordinary, val_docs
    )


def test_a_failure_while_writing_tokens_keeps_the_old_folder_which_then_reads_as_stale(
    base_run, tmp_path, monkeypatch
):
    import train_tokenizer

    run = shutil.copytree(base_run, tmp_path / "run")
    old_tokens = file_hashes(run / "tokens")

    def disk_full(out_dir, *a, **k):
        (Path(out_dir) / "train.bin").write_bytes(b"half")
        raise OSError(28, "No space left on device", str(Path(out_dir) / "train.bin"))

    monkeypatch.setattr(train_tokenizer, "write_token_shards", disk_full)
    with pytest.raises(OSError):
        bpe_main(["--data", str(run), "--vocab-size", "310", "--overwrite"])
    assert file_hashes(run / "tokens") == old_tokens and not list(run.glob(".tokens.*.tmp"))
    assert BPETokenizer.load(run / "tokenizer").vocab_size == 310  # tokenizer/ was complete: swapped in
    with pytest.raises(UserError, match=r"tokens is stale: it was made from .*tokenizer"):
        check_artifact(run / "tokens", made_by="(test)")


# ---------------------------------------------------------------- command line: bad input, as a user meets it
def rewrite_data(run):
    """data/ rewritten (a new manifest id): what was made from the old one is now stale."""
    write_manifest(run / "data", stage="01_data", command="(test data, again)", config={"again": True})


def hold_lock(run, folder):
    f = open(run / f".{folder}.lock", "a+")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def read_only(run):
    os.chmod(run, 0o555)


IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
BAD_INPUTS = [  # (script, flags, what is done to a copy of base_run first, the error it must give)
    ("train_tokenizer.py", ["--vocab-size", "262"], None, r"--vocab-size 262 is below its minimum 263"),
    ("train_tokenizer.py", ["--vocab-size", "10"], None, r"--vocab-size 10 is below its minimum 263"),
    ("train_tokenizer.py", ["--pattern", "(?<x"], None, r"--pattern '\(\?<x' is not a valid regex \(.+\)"),
    ("train_tokenizer.py", ["--nope"], None, r"unrecognized arguments: --nope"),
    ("wordpiece.py", ["--vocab-size", "5"], None, r"--vocab-size 5 is below its minimum 6"),
    (
        "wordpiece.py",
        ["--vocab-size", "20"],
        None,
        r"vocab size 20 is below WordPiece's minimum for this corpus: "
        r"5 special tokens \+ \d+ symbols .* = \d+; use --vocab-size \d+ or more",
    ),
    ("unigram.py", ["--vocab-size", "1"], None, r"--vocab-size 1 is below its minimum 2"),
    (
        "unigram.py",
        ["--vocab-size", "10"],
        None,
        r"vocab size 10 is below Unigram's minimum for this corpus: \d+ "
        r"characters .* use --vocab-size \d+ or more",
    ),
    ("unigram.py", ["--prune-fraction", "1.5"], None, r"--prune-fraction 1.5 is above its maximum 0.99"),
    (
        "train_tokenizer.py",
        ["--overwrite"],
        lambda run: shutil.rmtree(run / "data"),
        r"run/data: missing; make it first with `python 01_data/prepare.py --out .*run`",
    ),
    (
        "wordpiece.py",
        [],
        lambda run: (run / "data" / "manifest.json").unlink(),
        r"run/data: incomplete \(no manifest",
    ),
    (
        "unigram.py",
        [],
        lambda run: open(run / "data" / "train.jsonl", "a").write("{}\n"),
        r"train.jsonl: changed or damaged since .*; rerun",
    ),
    (
        "wordpiece.py",
        [],
        rewrite_data,
        r"run/tokenizer is stale: .*rerun `python 02_tokenizer/train_tokenizer.py --data",
    ),
    (
        "unigram.py",
        [],
        lambda run: (run / "tokenizer" / "tokenizer.json").write_text('{"format": "bpe-v1", "vo'),
        r"tokenizer.json: changed or damaged since `python 02_tokenizer/train_tokenizer.py --data .*`.*; rerun",
    ),
    (
        "train_tokenizer.py",
        [],
        None,
        r"run/tokens already holds a run \(`python 02_tokenizer/train_tokenizer.py --data .* --vocab-size 300`",
    ),
    (
        "wordpiece.py",
        [],
        lambda run: (run / "wordpiece").write_text("x"),
        r"run/wordpiece is a file, not a folder",
    ),
    (
        "train_tokenizer.py",
        ["--overwrite"],
        lambda run: ((run / ".tokens.lock").unlink(missing_ok=True), (run / ".tokens.lock").mkdir()),
        r"cannot use .*\.tokens\.lock: Is a directory",
    ),
    (
        "train_tokenizer.py",
        ["--overwrite"],
        lambda run: hold_lock(run, "tokens"),
        rf"run/tokens is being written by another process \(pid {os.getpid()}\)",
    ),
    pytest.param(
        "unigram.py",
        [],
        read_only,
        r"cannot use .*\.unigram\.lock: Permission denied",
        marks=pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions"),
    ),
    (
        "bench_bpe.py",
        ["--vocab-sizes", "100,2048"],
        None,
        r"--vocab-sizes 100 is too small; use at least 263",
    ),
    ("bench_bpe.py", ["--repeats", "0"], None, r"--repeats 0 is below its minimum 1"),
]


@pytest.mark.parametrize("script, flags, damage, message", BAD_INPUTS)
def test_bad_input_is_one_error_line_exit_2_and_changes_nothing(
    base_run, tmp_path, repo_root, script, flags, damage, message
):
    run = shutil.copytree(base_run, tmp_path / "run")
    held = damage(run) if damage else None
    before = file_hashes(run)
    data_flag = [] if script == "bench_bpe.py" else ["--data", str(run)]
    try:
        r = subprocess.run(
            [sys.executable, str(repo_root / "02_tokenizer" / script), *data_flag, *flags],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=repo_root,
        )
    finally:
        os.chmod(run, 0o755)
        if hasattr(held, "close"):
            held.close()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert re.search(message, lines[0]), lines[0]
    assert file_hashes(run) == before


def test_array_encoder_of_many_new_pieces_equals_per_piece_reference(tok):
    """encode_ordinary_batch's path for mostly new text (bpe_fast.encode_texts: every piece merged
    at once, the texts gathered in arrays) against the readable per-piece loop: English, Chinese,
    random bytes, empty texts; then again with a warm cache, and with a cache too small to hold it."""
    rng = random.Random(2)
    texts = corpus(600, seed=7) + ["", *SAMPLES.values(), ""]
    texts += [
        bytes(rng.randrange(256) for _ in range(200)).decode("utf-8", errors="replace") for _ in range(20)
    ]
    reference = [[i for w in tok._pat.findall(t) for i in tok.bpe_piece(w.encode())] for t in texts]
    tok._cache.clear()
    ids, cacheable = encode_texts([tok._pat.findall(t) for t in texts], tok.byte_ids, merge_table(tok.ranks))
    assert (
        ids == reference and cacheable and all(cacheable[w] == tok.bpe_piece(w.encode()) for w in cacheable)
    )
    assert (
        len({w for t in texts for w in tok._pat.findall(t)}) >= 1000
    )  # encode_ordinary_batch takes this path
    assert tok.encode_ordinary_batch(texts) == reference  # cold
    assert tok.encode_ordinary_batch(texts) == reference  # warm: the repeated pieces come from the cache
    size, tok.cache_size = tok.cache_size, 50
    try:
        tok._cache.clear()
        assert tok.encode_ordinary_batch(texts) == reference and len(tok._cache) <= 50
    finally:
        tok.cache_size = size


def test_array_encoder_equals_reference_on_hongloumeng_with_gpt2_ranks(gpt2, shared_data):
    text = (shared_data / "text" / "hongloumeng.txt").read_text(encoding="utf-8")[:80_000]
    gpt2._cache.clear()
    ids = gpt2.encode_ordinary(text)
    assert ids == [i for w in gpt2._pat.findall(text) for i in gpt2.bpe_piece(w.encode())]


MIXED = "红楼梦 甄士隐，贾雨村。The cat's 12345 dogs!\n\n  naïve café 👍🏽 👨‍👩‍👧 🇨🇳\t\r\nend   ok"


def random_vocabulary(rng, n_tokens):
    """A BPETokenizer whose tokens are random byte slices of MIXED (cut anywhere: half characters, a
    space with the first byte of a Chinese character, ...) at random ranks, after the 256 bytes: every
    kind of token that can lie across a character boundary, which a trained vocabulary has only a few of."""
    raw = MIXED.encode()
    tokens = set()
    while len(tokens) < n_tokens:
        a = rng.randrange(len(raw) - 1)
        tokens.add(raw[a : a + rng.randint(2, 7)])
    tokens = sorted(tokens)
    rng.shuffle(tokens)
    vocab = {i: bytes([i]) for i in range(256)} | {256 + k: t for k, t in enumerate(tokens)}
    return BPETokenizer(vocab, [], {})


def random_text(rng, n):
    return "".join(rng.choice(MIXED) for _ in range(n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cuts_lie_where_no_token_can_and_keep_every_id(seed, monkeypatch):
    """bpe_cuts: every cut inside a piece is a boundary that no token of a random vocabulary (half
    characters included) lies across anywhere in the piece, checked by brute force; and the cut
    encoder's ids equal the per-piece reference: exact halves (one bit each), too many halves
    (flagged), and the searched pair table instead of the dense grid."""
    import bpe_cuts

    rng = random.Random(seed)
    t = random_vocabulary(rng, 300)
    texts = [random_text(rng, rng.randrange(1, 400)) for _ in range(60)] + [MIXED, ""]
    pieces = [t._pat.findall(x) for x in texts]
    want = [[i for w in p for i in t.bpe_piece(w.encode())] for p in pieces]
    table = merge_table(t.ranks)
    monkeypatch.setattr(bpe_cuts, "SUBS_PER_PIECE", 0)  # always merged cut
    for halves_max, grid_max in ((64, 1 << 26), (3, 1 << 26), (0, 0)):
        monkeypatch.setattr(bpe_cuts, "HALVES_MAX", halves_max)
        monkeypatch.setattr(bpe_cuts, "GRID_MAX", grid_max)
        cuts = cut_table(t.ranks)
        assert (cuts.grid is None) == (grid_max == 0) and (cuts.ends is None) == (halves_max == 0)
        distinct = list(dict.fromkeys(w for p in pieces for w in p))
        chars = np.array([ord(c) for c in "".join(distinct)], np.int64)
        lengths = np.array([len(w) for w in distinct], np.int64)
        start = sub_piece_starts(chars, lengths, cuts)
        for w, first in zip(distinct, np.cumsum(lengths) - lengths):
            raw, at = w.encode(), 0  # byte offset of each character
            for k, c in enumerate(w):
                if k and start[first + k]:  # a cut: no token covers bytes on both sides of it
                    assert not any(
                        raw[a:b] in t.ranks
                        for a in range(at)
                        for b in range(at + 1, min(len(raw), at + 8) + 1)
                    ), (w, k)
                at += len(c.encode())
        assert encode_texts(pieces, t.byte_ids, table, cuts)[0] == want
    assert start.sum() > len(distinct)  # some pieces were cut


def test_distinct_sub_pieces_of_one_two_three_and_more_characters():
    """Sub-pieces of 1, 2-3 and 4+ characters are made distinct three ways; each row points to a
    string equal to its sub-piece, chr(0) included (code points are packed + 1)."""
    rng = random.Random(4)
    joined = "".join(rng.choice("ab\x00中文😀") for _ in range(3000))
    chars = np.array([ord(c) for c in joined], np.int64)
    cuts = sorted(rng.sample(range(1, len(joined)), 900))
    starts = np.array([0, *cuts])
    lengths = np.diff(np.append(starts, len(joined)))
    strings, row = distinct_sub_pieces(joined, chars, starts, lengths)
    assert [strings[r] for r in row] == [joined[a : a + m] for a, m in zip(starts, lengths)]
    assert len(set(strings)) == len(strings) and {1, 2, 3} < set(lengths.tolist()) and lengths.max() > 3


def test_cut_encoder_on_mixed_text_cold_then_from_the_cache(tok, gpt2, monkeypatch):
    """encode_ordinary on Chinese, English, emoji and whitespace of every kind, cold through the
    sub-pieces (bpe_cuts.encode_texts) and through whole pieces, equals tiktoken; then again with
    every piece a cache hit. GPT-2's ranks have tokens such as b" \\xe7" (a space and half a Chinese
    character) that the cut table flags."""
    import bpe_cuts

    text = (MIXED + "\n") * 300  # 4,000+ pieces: the cold path
    for t in (tok, gpt2):
        want = t.to_tiktoken().encode_ordinary(text)
        for subs_per_piece in (0, 1000):  # always cut / never cut
            monkeypatch.setattr(bpe_cuts, "SUBS_PER_PIECE", subs_per_piece)
            t._cache.clear()
            assert t.encode_ordinary(text) == want
        t._cache.clear()
        t.encode_ordinary(MIXED + "\n")  # a few pieces: each merged alone and cached
        assert set(t._pat.findall(text)) <= set(t._cache)  # so the next call reads every piece from it
        assert t.encode_ordinary(text) == want
    assert gpt2._cut_table.flags.any() and gpt2._cut_table is not None


def test_dense_merge_table_equals_the_searched_one(tok, monkeypatch):
    """merge_table's dense grid (a row per token that starts a pair, a column per token that ends
    one) and the binary search give the same ranks for every pair of tokens of the vocabulary."""
    import bpe_fast

    dense = merge_table(tok.ranks)
    monkeypatch.setattr(bpe_fast, "DENSE_MAX_ENTRIES", 0)
    searched = merge_table(tok.ranks)
    assert dense[4] is not None and searched[4] is None
    V = len(tok.ranks)
    left, right = np.repeat(np.arange(V), V), np.tile(np.arange(V), V)
    none = bpe_fast.no_merge(dense)
    ranks = bpe_fast.rank_of_pairs(dense, left, right, none)
    assert (ranks == bpe_fast.rank_of_pairs(searched, left, right, none)).all() and (ranks < none).any()


def test_bmp_pretokenizer_finds_the_regex_modules_pieces():
    """pretokenize.PreTokenizer runs GPT-2's and GPT-4's patterns with the standard library's `re` on
    text without characters beyond U+FFFF: the same pieces as the `regex` module on random text of
    every kind of character below U+10000 (letters and digits of many scripts, marks, every
    whitespace, ſ and the Kelvin sign that match s / k case-insensitively, apostrophes, CR/LF), with
    an emoji added (the `regex` module's turn), and on real English and Chinese."""
    import regex

    from pretokenize import PreTokenizer

    rng = random.Random(8)
    every = [chr(c) for c in [*range(0xD800), *range(0xE000, 0x10000)]]
    common = list("'sSdtmlLvVeErR ſK\n\r\t\x0b\x0c\x1c\x85\xa0\u2028\u3000 aZ9٣²中文，。!?-_")
    texts = [
        "".join(rng.choice(common if rng.random() < 0.6 else every) for _ in range(300)) for _ in range(300)
    ]
    texts += [x + "😀" + x for x in texts[:20]] + ["", "'S'LL's're'VE  \n\n  x", "\r\n\t \u3000'd"]
    for name in ("gpt2", "gpt4"):
        pre = PreTokenizer(name)
        full = regex.compile(pre.pattern)
        assert pre.bmp is not None
        for x in texts:
            assert pre.findall(x) == full.findall(x) == pre.full.findall(x)
            if "😀" not in x:
                assert pre.bmp.findall(x) == full.findall(x), repr(x)
    assert PreTokenizer(r"\w+").bmp is None  # other patterns: the regex module only


def test_bmp_pretokenizer_on_real_text(shared_data):
    import regex

    from pretokenize import PreTokenizer

    for f in ("tinyshakespeare.txt", "hongloumeng.txt", "chinese_classics.txt"):
        text = (shared_data / "text" / f).read_text(encoding="utf-8")
        for name in ("gpt2", "gpt4"):
            pre = PreTokenizer(name)
            assert pre.bmp.findall(text) == regex.compile(pre.pattern).findall(text)


def test_unigram_viterbi_tries_pieces_of_exactly_max_len():
    import math

    # "abc" with max_len 3: the whole word (p = .5) beats a|b|c (.1³ = .001) and ab|c (.2·.1 = .02);
    # with max_len 2 it may not be used: ab|c wins
    logp = {
        "a": math.log(0.1),
        "b": math.log(0.1),
        "c": math.log(0.1),
        "ab": math.log(0.2),
        "abc": math.log(0.5),
    }
    assert viterbi("abc", logp, 3) == (["abc"], pytest.approx(math.log(0.5)))
    assert viterbi("abc", logp, 2) == (["ab", "c"], pytest.approx(math.log(0.02)))
