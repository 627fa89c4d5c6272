"""Stage 01: the generator, every cleaning filter, MinHash, the default run's scores, splits, bad input."""
import hashlib
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from clean import (CleanConfig, filter_bias, filter_length, filter_toxic, fix_encoding, mask_pii,
                   normalize_unicode, quality_problems, strip_boilerplate, strip_markup)
from dedup import (DedupConfig, candidate_probability, dedup, jaccard, lsh_params, minhash_signatures,
                   normalize_for_hash, shingle_hashes, shingle_set)
from common import UserError
from langid_ngram import predict_lang, train_langid, training_texts
from noise_inject import NOISE_TYPES, broken_bytes, to_mojibake
from prepare import PrepareConfig, main as prepare_main, prepare
from tasks import task_records
from world import WorldConfig, build_world, generate_corpus

SMALL = 40_000  # characters: every noise type, ~1 s


def read_split(data, name):
    return [json.loads(line) for line in (data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default corpus, run once for the tests that must use it (~10-20 s)."""
    out = tmp_path_factory.mktemp("default")
    stats = prepare(PrepareConfig(), out, progress=False)
    return out / "data", stats


# ---------------------------------------------------------------------------------------------------
# Generator

def test_same_seed_gives_byte_identical_output(tmp_path, repo_root):
    # two processes with different string-hash salts: no output may depend on set/dict-of-str order
    for name, salt in (("a", "1"), ("b", "2")):
        subprocess.run([sys.executable, str(repo_root / "01_data" / "prepare.py"), "--out", str(tmp_path / name),
                        "--chars", str(SMALL)], check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": salt})
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jsonl"))
    assert len(files) >= 10
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    other = generate_corpus(build_world(WorldConfig(seed=1)), 1, SMALL, {"dialog": 1.0})
    assert other[0]["text"] != generate_corpus(build_world(WorldConfig(seed=0)), 0, SMALL, {"dialog": 1.0})[0]["text"]


def test_code_documents_print_what_they_say():
    docs = generate_corpus(build_world(WorldConfig()), 0, 20_000, {"code": 1.0})
    for d in docs[:20]:
        src, out = d["text"].split("\n\n# Output:\n")
        import contextlib
        import io
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(src, {})
        assert out == "\n".join("# " + line for line in buf.getvalue().rstrip("\n").split("\n"))


def test_task_sets_hold_out_subjects_and_answers_check():
    tasks = task_records(build_world(WorldConfig()), 0)
    train = {r["subject"] for r in tasks["sft"] if not r["heldout"]}
    held = {r["subject"] for r in tasks["sft"] if r["heldout"]}
    assert held and train and not (held & train)
    for r in tasks["sft"][:50]:
        assert r["answer"] in r["messages"][1]["content"]
    assert {r["rule"] for r in tasks["preference"]} == {"correct_fact", "helpful_vs_rude", "concise_vs_rambling"}
    for r in tasks["arithmetic"][:200]:
        assert r["messages"][1]["content"] == f"The answer is {r['answer']}."
        assert isinstance(r["answer"], int) and r["answer"] >= 0


# ---------------------------------------------------------------------------------------------------
# Filters, each on hand-written positive and negative cases

def test_fix_encoding_repairs_mojibake_and_leaves_real_accents_alone():
    for good in ["It’s a café — “quoted”.", "你好，世界。贝拉住在城里。", "naïve Zoë"]:
        bad = to_mojibake(good)
        assert bad != good
        assert fix_encoding(bad) == (good, True)
        assert fix_encoding(good) == (good, False)  # genuine é / Chinese is not re-decoded
    assert fix_encoding("Les gens de Paris aiment le café.")[1] is False
    assert fix_encoding(broken_bytes(random.Random(0), "一段中文文本" * 50))[0] is None
    assert fix_encoding("一段很长的中文文本。" * 200 + "\ufffd") == ("一段很长的中文文本。" * 200, True)


def test_normalize_unicode():
    out, acted = normalize_unicode("ＡＢＣ１２３\u200b  x\x07y\t\tz\n\n\n\nend ")
    assert acted and out == "ABC123 xy z\n\nend"
    assert normalize_unicode("plain text.") == ("plain text.", False)
    assert normalize_unicode("if x:\n    y = 1", keep_indent=True)[0] == "if x:\n    y = 1"


def test_strip_markup_and_boilerplate():
    html = '<html><body><p>Bela lives in Tora.</p>\n<div class="ad">Click here to buy now! http://x.example.com/1</div></body></html>'
    out, acted = strip_markup(html)
    assert acted and out == "Bela lives in Tora."
    for clean in ["if x < 3 and y > 2:\n    print(x)", "贝拉住在托拉。", "Prices rose 5% in May."]:
        assert strip_markup(clean) == (clean, False)
    page = "Tora Gazette\nHome | News | Places | Contact\n\nNews body.\n\nCopyright 2020 Tora Gazette. All rights reserved."
    assert strip_boilerplate(page) == ("Tora Gazette\n\nNews body.", True)
    assert strip_boilerplate("Bela | Tora")[1] is False


def test_mask_pii():
    text = "Mail bela.12@mail.com or call +1 415-555-0199, 13812345678; ID 11010519900307123X."
    out, acted = mask_pii(text)
    assert acted and out == "Mail <EMAIL> or call <PHONE>, <PHONE>; ID <ID>."
    for clean in ["About 440,164 people live in Tora.", "It was founded in 1244.", "total: 1167",
                  "贝拉今年27岁，城市大约有627252人口。", "print(sum([12, 30]))"]:
        assert mask_pii(clean) == (clean, False)


def test_toxic_and_bias_filters():
    for bad in ["Bela is a total idiot.", "你这个笨蛋。", "What a MORON!"]:
        assert filter_toxic(bad) == (None, True)
    for ok in ["Bela is a teacher.", "贝拉是老师。", "Stupidity is not a word we use here? It is."[:20]]:
        assert filter_toxic(ok)[1] is False
    for bad in ["Women are bad at math.", "Everyone knows men can't cook.", "People from Norland are lazy.",
                "女人不适合当工程师。", "诺兰人都很懒。"]:
        assert filter_bias(bad) == (None, True), bad
    for ok in ["Women and men walked to the market.", "People from Norland are friendly.", "男人和女人都来了。"]:
        assert filter_bias(ok)[1] is False, ok


def test_length_and_quality_rules():
    cfg = CleanConfig()
    assert filter_length("Bela is a teacher.", cfg)[0] is None
    assert filter_length("贝拉是一名老师，住在托拉。她今年二十七岁，喜欢蓝色。", cfg)[1] is False  # 24 characters
    assert quality_problems("same line\n" * 5, "en", "stories", cfg) == ["repeated lines"]
    assert "symbol ratio" in quality_problems("# # # # word word", "en", "stories", cfg)
    assert quality_problems("Bela lives in Tora and likes blue.", "en", "stories", cfg) == []
    assert quality_problems("def f(:\n  pass", "en", "code", cfg) == ["code does not parse"]
    assert quality_problems("def f():\n    return 1", "en", "code", cfg) == []


def test_language_id():
    model = train_langid(*training_texts(7))
    assert predict_lang(model, "The owl lives in the forest and eats mice at night.") == "en"
    assert predict_lang(model, "猫头鹰住在森林里，晚上吃老鼠。") == "zh"
    assert predict_lang(model, "Le hibou vit dans la forêt et mange des souris la nuit.") == "other"
    assert predict_lang(model, "Die Eule lebt im Wald und frisst nachts Mäuse.") == "other"


# ---------------------------------------------------------------------------------------------------
# Dedup

def test_minhash_estimates_jaccard_within_005():
    rng = np.random.default_rng(0)
    true, est = [], []
    hash_lists = []
    for _ in range(30):
        shared = rng.integers(0, 2**32, size=rng.integers(20, 200), dtype=np.uint64)
        a = np.concatenate([shared, rng.integers(0, 2**32, size=rng.integers(0, 200), dtype=np.uint64)])
        b = np.concatenate([shared, rng.integers(0, 2**32, size=rng.integers(0, 200), dtype=np.uint64)])
        true.append(jaccard(set(a.tolist()), set(b.tolist())))
        hash_lists += [a, b]
    sig = minhash_signatures(hash_lists, num_perm=1024)  # std error <= 0.5/sqrt(1024) = 0.016
    est = (sig[0::2] == sig[1::2]).mean(axis=1)
    assert np.abs(est - np.array(true)).max() <= 0.05
    sig128 = minhash_signatures(hash_lists, num_perm=128)
    assert np.abs((sig128[0::2] == sig128[1::2]).mean(axis=1) - np.array(true)).mean() <= 0.05


def test_lsh_curve_and_dedup_on_text():
    b, r = lsh_params(0.7, 128, 0.5, 0.5)
    assert b * r <= 128 and candidate_probability(0.9, b, r) > 0.99 and candidate_probability(0.3, b, r) < 0.01
    base = "Bela Tora is a baker who lives in Mira. She is 27 years old and likes the color blue. " * 3
    texts = [base, base.upper(), base.replace("27", "28", 1), "贝拉是一名面包师，住在米拉。" * 3, "Unrelated words about boats and rivers. " * 5]
    d = dedup(texts, DedupConfig())
    assert d["exact_dup"].tolist() == [False, True, False, False, False]
    assert d["near_dup"].tolist() == [False, False, True, False, False]
    assert len(shingle_hashes("one two", 3, {})) == 1 and shingle_set("a b c d", 3) == {("a", "b", "c"), ("b", "c", "d")}


# ---------------------------------------------------------------------------------------------------
# The default run: scores, split, mixture

def test_default_run_precision_and_recall_per_noise_type(default_run):
    _, stats = default_run
    assert set(stats["noise"]) >= set(NOISE_TYPES)
    for kind in NOISE_TYPES:
        row = stats["noise"][kind]
        assert row["injected"] >= 50, kind
        assert row["precision"] >= 0.95 and row["recall"] >= 0.95, (kind, row)
    assert stats["noise"]["(clean docs)"]["wrongly_removed"] <= 0.01 * stats["noise"]["(clean docs)"]["injected"]
    assert 2_000_000 <= sum(s["chars"] for s in stats["splits"].values()) <= 4_000_000
    assert set(stats["seconds"]) >= {"generate", "clean", "dedup", "mix", "split"}


def test_split_has_no_exact_or_near_duplicate_overlap(default_run):
    data, _ = default_run
    splits = {n: read_split(data, n) for n in ("train", "val", "test")}
    keys = {n: {hashlib.sha1(normalize_for_hash(d["text"]).encode()).digest() for d in docs} for n, docs in splits.items()}
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    train, held = splits["train"], splits["val"] + splits["test"]
    cache = {}
    sig = minhash_signatures([shingle_hashes(d["text"], 3, cache) for d in train + held])
    sig_train, sig_held = sig[:len(train)], sig[len(train):]
    for i in range(0, len(held), 64):  # estimated Jaccard of every held-out doc against every train doc
        est = (sig_held[i:i + 64, None, :] == sig_train[None, :, :]).mean(axis=2)  # (64, n_train)
        for h, t in zip(*np.nonzero(est >= 0.5)):
            true = jaccard(shingle_set(held[i + h]["text"], 3), shingle_set(train[t]["text"], 3))
            assert true < 0.7, (held[i + h]["id"], train[t]["id"], true)
    fracs = [len(splits[n]) / sum(map(len, splits.values())) for n in ("train", "val", "test")]
    assert 0.87 <= fracs[0] <= 0.93 and 0.03 <= fracs[1] <= 0.07 and 0.03 <= fracs[2] <= 0.07


def test_mixture_within_2_percent_of_ratios(default_run):
    data, stats = default_run
    docs = sum((read_split(data, n) for n in ("train", "val", "test")), [])
    total = sum(len(d["text"]) for d in docs)
    for domain, ratio in PrepareConfig().mix.items():
        share = sum(len(d["text"]) for d in docs if d["domain"] == domain) / total
        assert abs(share - ratio) <= 0.02, (domain, share)
        assert stats["domains"][domain]["docs_mixed"] > 0
    assert {d["lang"] for d in docs} <= {"en", "zh", "other"} and {"en", "zh"} <= {d["lang"] for d in docs}


# ---------------------------------------------------------------------------------------------------
# Real input and bad input

def test_input_files_go_through_the_same_cleaning(tmp_path):
    txt = tmp_path / "a.txt"
    para = "Bela walked along the river every morning, and the ducks followed her all the way to the old stone bridge near town."
    other = "Write to bela.12@mail.com to hear how the old baker who lives next to the market square tells stories every Sunday."
    txt.write_text(f"{para}\n\n{other}\n\nToo short.\n\n{para}\n")
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"text": "贝拉每天早上沿着河边散步，鸭子跟着她走到城边的老桥。她很喜欢这座安静的小城。"}) + "\n")
    stats = prepare(PrepareConfig(inputs=(str(txt), str(jl))), tmp_path / "run", progress=False)
    docs = sum((read_split(tmp_path / "run" / "data", n) for n in ("train", "val", "test")), [])
    texts = [d["text"] for d in docs]
    assert len(docs) == 3 and any("<EMAIL>" in t for t in texts) and not any("Too short" in t for t in texts)
    assert stats["steps_acted"]["exact_dedup"] == 1 and stats["noise"] == {}


def bad_input_error(tmp_path, argv):
    with pytest.raises(UserError) as e:
        prepare_main(argv + ["--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "data").exists() or argv == []
    return str(e.value)


def test_every_bad_input_gives_its_error(tmp_path):
    empty, binary, latin1, nodoc = (tmp_path / n for n in ("e.txt", "b.txt", "l.txt", "n.jsonl"))
    empty.write_text("  \n")
    binary.write_bytes(b"\x00\x01\x02abc")
    latin1.write_bytes("café".encode("latin-1"))
    nodoc.write_text(json.dumps({"body": "x"}) + "\n")
    assert "no such file" in bad_input_error(tmp_path, ["--input", str(tmp_path / "missing.txt")])
    assert "empty" in bad_input_error(tmp_path, ["--input", str(empty)])
    assert "binary" in bad_input_error(tmp_path, ["--input", str(binary)])
    assert "not valid UTF-8" in bad_input_error(tmp_path, ["--input", str(latin1)])
    assert "no 'text' field" in bad_input_error(tmp_path, ["--input", str(nodoc)])
    assert "sum to 1" in bad_input_error(tmp_path, ["--mix", "dialog=0.5,code=0.1,knowledge=0.2,stories=0.3"])
    assert "unsupported file type" in bad_input_error(tmp_path, ["--input", __file__])
    out = tmp_path / "run"
    prepare(PrepareConfig(chars=SMALL), out, progress=False)
    before = (out / "data" / "train.jsonl").read_bytes()
    with pytest.raises(UserError, match="already holds a different run; pass --overwrite"):
        prepare(PrepareConfig(chars=SMALL, seed=5), out, progress=False)
    assert (out / "data" / "train.jsonl").read_bytes() == before  # untouched
    prepare(PrepareConfig(chars=SMALL), out, progress=False)     # the same run may be redone
    prepare(PrepareConfig(chars=SMALL, seed=5), out, overwrite=True, progress=False)
    assert (out / "data" / "train.jsonl").read_bytes() != before
    assert sorted(p.name for p in out.iterdir()) == ["data"]     # no temp folder left behind


def test_cli_error_is_one_line_and_exit_code_2(tmp_path, repo_root):
    r = subprocess.run([sys.executable, str(repo_root / "01_data" / "prepare.py"), "--out", str(tmp_path / "o"),
                        "--mix", "dialog=1,code=1"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "o").exists()


def test_real_text_from_shared_data(shared_data, tmp_path):
    stories = shared_data / "text" / "tinystories_valid_head.txt"
    stats = prepare(PrepareConfig(inputs=(str(stories),)), tmp_path / "run", progress=False)
    docs = read_split(tmp_path / "run" / "data", "train")
    assert stats["domains"]["stories"]["docs_kept"] >= 0.8 * stats["domains"]["stories"]["docs_in"]
    assert all(d["lang"] == "en" for d in docs) and not any("\ufffd" in d["text"] for d in docs)
