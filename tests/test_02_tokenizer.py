"""Stage 02: byte-level BPE (against a naive reference, hand-computed merges, tiktoken, GPT-2),
WordPiece and Unigram on hand-checked examples, the CLI's artifacts, and the bad-input errors."""
import json
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from bpe import GPT2_PATTERN, GPT4_PATTERN, SPECIAL_TOKENS, BPETokenizer, train_merges, train_merges_naive, word_counts_of
from tokenizer_cli import main as bpe_main
from common import UserError, write_manifest
from unigram import UnigramConfig, UnigramTokenizer, train_unigram, viterbi
from wordpiece import SPECIALS, WordPieceTokenizer, train_wordpiece

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
            docs.append("".join(rng.choice("我们你他的是在有一个人这中大为上们来说国到") for _ in range(rng.randint(5, 40))) + "。")
        elif kind == 2:
            docs.append(f"def f{i}(x):\n    return x * {rng.randint(0, 999)} + {rng.choice(words)!r}\n")
        else:
            docs.append(f"{rng.choice(words)} {rng.randint(0, 10**6)}, {rng.choice(words)}! {SAMPLES['emoji']}")
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
    assert t.merges[0] == (ord("w"), ord("e")) and t.merges[2] == (256, ord("s")) and t.merges[4] == (ord("n"), ord("e"))
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
    ids = [tok.byte_ids[b] for b in "你".encode("utf-8")]
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
    from bench_bpe import generated_corpus   # 01_data's synthetic world, all four domains
    docs = generated_corpus(150_000)
    t = BPETokenizer.train(docs[: len(docs) // 2], 1000)
    enc = t.to_tiktoken()
    for doc in docs:   # half of them unseen in training
        assert t.encode_ordinary(doc) == enc.encode_ordinary(doc)
        assert t.decode(t.encode_ordinary(doc)) == doc


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
        BPETokenizer.train(["abc"], 256 + len(SPECIAL_TOKENS) - 1)
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
    assert WordPieceTokenizer.train(corpus(), 300, min_pair_count=10**6).vocab_size < 300  # no pair that frequent
    assert wp.tokenize("我们") == ["我", "们"]  # each CJK character is its own word, as in BERT
    with pytest.raises(UserError, match="empty"):
        WordPieceTokenizer.train([" "], 300)


def test_unigram_viterbi_hand_checked():
    # "▁ab": ▁|a|b = .1*.2*.2 = .004, ▁|ab = .1*.4 = .04, ▁a|b = .3*.2 = .06 (best).
    import math
    logp = {"▁": math.log(.1), "a": math.log(.2), "b": math.log(.2), "▁a": math.log(.3), "ab": math.log(.4)}
    pieces, score = viterbi("▁ab", logp, 8)
    assert pieces == ["▁a", "b"] and score == pytest.approx(math.log(.06))
    assert viterbi("▁ax", logp, 8) == (None, -math.inf)


def test_unigram_learns_frequent_words_and_chinese():
    texts = ["hello world hello there"] * 50 + ["我爱北京天安门我爱北京"] * 50 + ["xyz"]
    cfg = UnigramConfig(max_piece_chars=6)
    logp = train_unigram(Counter(w for t in texts for w in ("▁" + x for x in t.split())), 28, cfg)
    # 19 distinct characters; the other pieces go to whole frequent words and Chinese multi-character
    # pieces found with no word segmentation (Viterbi prefers few, likely pieces).
    assert len(logp) <= 27 and "▁hello" in logp and "▁world" in logp
    assert any(len(p) >= 2 and "北" in p for p in logp)
    assert all(c in logp for c in "我爱北京天安门xyz")   # every seen character survives pruning
    uni = UnigramTokenizer(logp, cfg.max_piece_chars)
    assert uni.decode(uni.encode("hello world 我爱北京")) == "hello world 我爱北京"
    assert uni.tokenize("hello q") == ["▁hello", "▁", "<unk>"]


# ---------------------------------------------------------------- command line
def write_run(root, docs_train, docs_val):
    (root / "data").mkdir(parents=True)
    for split, docs in (("train", docs_train), ("val", docs_val)):
        with open(root / "data" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, (text, domain, lang) in enumerate(docs):
                f.write(json.dumps({"id": f"{split}{i}", "domain": domain, "lang": lang, "text": text}) + "\n")
    write_manifest(root / "data", stage="01_data", command="(test data)", config={})


def test_cli_writes_tokenizer_and_shards(tmp_path):
    kinds = [("stories", "en"), ("knowledge", "zh"), ("code", "en"), ("dialog", "en")]
    docs = [(text, *kinds[i % 4]) for i, text in enumerate(corpus(120, seed=5))]
    write_run(tmp_path / "run", docs[:100], docs[100:])
    bpe_main(["--data", str(tmp_path / "run"), "--vocab-size", "400"])
    meta = json.loads((tmp_path / "run" / "tokens" / "meta.json").read_text())
    assert meta["vocab_size"] == 400 and meta["dtype"] == "uint16" and meta["tokenizer_dir"] == "tokenizer"
    tok = BPETokenizer.load(tmp_path / "run" / "tokenizer")
    assert meta["eot_id"] == tok.eot_id
    val = np.fromfile(tmp_path / "run" / "tokens" / "val.bin", dtype=np.uint16)
    assert len(val) == meta["n_tokens"]["val"] and (val == tok.eot_id).sum() == 20
    assert tok.decode(val.tolist()) == "".join(t + "<|endoftext|>" for t, _, _ in docs[100:])
    outcome = json.loads((tmp_path / "run" / "tokenizer" / "outcome.json").read_text())
    assert {"english", "chinese", "code"} <= set(outcome["rows"][0])


def test_cli_bad_input_is_one_line_exit_2(tmp_path, repo_root):
    write_run(tmp_path / "run", [("hello", "stories", "en")], [("hi", "stories", "en")])
    r = subprocess.run([sys.executable, str(repo_root / "02_tokenizer" / "bpe.py"), "--data", str(tmp_path / "run"),
                        "--vocab-size", "100"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: --vocab-size 100 is below its minimum 263") and "Traceback" not in r.stderr
