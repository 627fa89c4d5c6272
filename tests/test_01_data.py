"""Stage 01: the generator, every cleaning filter, MinHash, the default run's scores, splits, real and bad input."""

import ast
import contextlib
import hashlib
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from clean import (
    CleanConfig,
    filter_bias,
    filter_length,
    filter_toxic,
    fix_encoding,
    is_biased,
    is_toxic,
    normalize_unicode,
    quality_problems,
    strip_boilerplate,
    strip_markup,
)
from pii import cn_id_ok, luhn_ok, mask_pii, mask_pii_counts
from common.runs import check_artifact, run_lock
from dedup import (
    DedupConfig,
    candidate_probability,
    dedup,
    jaccard,
    lsh_params,
    minhash_signatures,
    normalize_for_hash,
    shingle_hashes,
    shingle_set,
    exact_line_dedup,
    line_dedup,
)
from html_text import html_to_text, looks_like_html, token_f1
from pii_eval import pii_scores
from quality_rules import c4_clean_lines, c4_line_ok, gopher_problems
from filter_fp import filter_rates
from langid_ngram import predict_lang, train_langid, training_texts
from noise_inject import (
    BIAS_EN,
    BIAS_ZH,
    NOISE_TYPES,
    TOXIC_EN,
    TOXIC_ZH,
    broken_bytes,
    to_mojibake,
)
from data_outcome import BAR, NOT_CLAIMED, format_table, wilson
from input_documents import cut_document, read_documents
from prepare import PrepareConfig, prepare
from tasks import task_records
from world import ITEMS, WorldConfig, build_world
from world_corpus import generate_corpus

SMALL = 40_000  # characters: every noise type, ~1 s


def read_split(data, name):
    return [json.loads(line) for line in (data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def run_prepare(repo_root, *args, env=None):
    return subprocess.run(
        [sys.executable, str(repo_root / "01_data" / "prepare.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def tree_hashes(folder):
    """{relative path: sha256} of every file under folder (what "byte-identical afterwards" compares)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default corpus, run once for the tests that must use it (~15 s)."""
    out = tmp_path_factory.mktemp("default")
    stats = prepare(PrepareConfig(), out, progress=False)
    return out / "data", stats


@pytest.fixture(scope="module")
def small_cli_run(tmp_path_factory):
    """A small run through the command line, as a user would make it: (run folder, finished process)."""
    from conftest import REPO

    out = tmp_path_factory.mktemp("small") / "run"
    r = run_prepare(REPO, "--out", out, "--chars", SMALL, env={**os.environ, "PYTHONHASHSEED": "1"})
    assert r.returncode == 0, r.stderr
    return out, r


# ---------------------------------------------------------------------------------------------------
# Generator


def test_same_seed_gives_byte_identical_output(small_cli_run, tmp_path, repo_root):
    # a second process with another string-hash salt: no output may depend on set/dict-of-str order
    a, _ = small_cli_run
    r = run_prepare(
        repo_root, "--out", tmp_path / "b", "--chars", SMALL, env={**os.environ, "PYTHONHASHSEED": "2"}
    )
    assert r.returncode == 0, r.stderr
    files = sorted(p.relative_to(a) for p in a.rglob("*.jsonl"))
    assert len(files) >= 10
    for f in files:
        assert (a / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    other = generate_corpus(build_world(WorldConfig(seed=1)), 1, SMALL, {"dialog": 1.0})
    assert (
        other[0]["text"]
        != generate_corpus(build_world(WorldConfig(seed=0)), 0, SMALL, {"dialog": 1.0})[0]["text"]
    )


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
    assert {r["rule"] for r in tasks["preference"]} == {
        "correct_fact",
        "helpful_vs_rude",
        "concise_vs_rambling",
    }
    for r in tasks["arithmetic"][:200]:
        assert r["messages"][1]["content"] == f"The answer is {r['answer']}."
        assert isinstance(r["answer"], int) and r["answer"] >= 0


def test_heldout_arithmetic_shares_neither_form_and_numbers_nor_wording_with_training():
    import re

    tasks = task_records(build_world(WorldConfig()), 0)
    train = [r for r in tasks["arithmetic"] if not r["heldout"]]
    held = [r for r in tasks["arithmetic"] if r["heldout"]]
    assert len(held) >= 200 and {r["form"] for r in held} == {"add", "sub", "mul", "div"}
    key = lambda r: (r["form"], tuple(r["numbers"]))
    assert not {key(r) for r in held} & {key(r) for r in train}
    # wording: a question with its numbers and capitalized words (names, cities) blanked out
    skeleton = lambda r: re.sub(r"\b([A-Z]\w*|\d+)\b", "_", r["prompt"])
    item = lambda r: next(w for w in ITEMS if w in r["prompt"])
    blank = lambda r: skeleton(r).replace(item(r), "ITEM")
    assert not {blank(r) for r in held} & {blank(r) for r in train}
    for r in held:
        nums = [int(x) for x in re.findall(r"\d+", r["prompt"])]
        assert sorted(nums) == sorted(r["numbers"]) and str(r["answer"]) in r["messages"][1]["content"]


def test_heldout_preference_pairs_use_unseen_rejected_replies_balanced_in_length():
    tasks = task_records(build_world(WorldConfig()), 0)
    pairs = tasks["preference"]
    for rule in ("helpful_vs_rude", "concise_vs_rambling"):
        seen = {r["rejected"] for r in pairs if r["rule"] == rule and not r["heldout"]}
        held = [r for r in pairs if r["rule"] == rule and r["heldout"]]
        assert held and not seen & {r["rejected"] for r in held}
    for r in pairs:  # a rambling reply restates the fact; it never wraps the chosen answer verbatim
        assert r["chosen"] not in r["rejected"]
    rude = [r for r in pairs if r["rule"] == "helpful_vs_rude" and r["heldout"]]
    shorter = sum(len(r["rejected"]) < len(r["chosen"]) for r in rude) / len(rude)
    assert 0.35 < shorter < 0.65  # "prefer the shorter" is near chance on rude pairs
    held_rules = [r["rule"] for r in pairs if r["heldout"]]
    assert held_rules.count("correct_fact") == held_rules.count("helpful_vs_rude") > 30


# ---------------------------------------------------------------------------------------------------
# Filters, each on hand-written positive and negative cases


def test_fix_encoding_repairs_mojibake_and_leaves_real_text_alone():
    for good in ["It’s a café — “quoted”.", "你好，世界。贝拉住在城里。", "naïve Zoë", "Grüße, daß“ er kam"]:
        for bad in (to_mojibake(good), to_mojibake(good, codec="latin-1"), to_mojibake(to_mojibake(good))):
            assert bad != good
            assert fix_encoding(bad) == (good, True), bad
        assert fix_encoding(good) == (good, False)  # genuine é / ß“ / Chinese is not re-decoded
    # cp1252 cannot show 0x9D, so '”' (E2 80 9D) loses its last byte: what TinyStories has
    assert to_mojibake("“Hi,” he said.", lose_undefined=True) == "â€œHi,â€ he said."
    assert fix_encoding("â€œHi,â€ he said. Benâ€™s boat.") == ("“Hi,” he said. Ben’s boat.", True)
    assert fix_encoding("Ã© in one place, é genuine in another")[0] == "é in one place, é genuine in another"
    for clean in ["Les gens de Paris aiment le café.", "SÃO PAULO", "50 °C ± 2", "Ægir’s “saga”"]:
        assert fix_encoding(clean) == (clean, False), clean
    assert fix_encoding(broken_bytes(random.Random(0), "一段中文文本" * 50))[0] is None
    assert fix_encoding("一段很长的中文文本。" * 200 + "\ufffd") == ("一段很长的中文文本。" * 200, True)


def test_normalize_unicode():
    out, acted = normalize_unicode("ＡＢＣ１２３\u200b  x\x07y\t\tz\n\n\n\nend ")
    assert acted and out == "ABC123 xy z\n\nend"
    assert normalize_unicode("plain text.") == ("plain text.", False)
    assert normalize_unicode("if x:\n    y = 1", keep_indent=True)[0] == "if x:\n    y = 1"
    assert (
        normalize_unicode("你好，世界！（注：ＡＢ）")[0] == "你好，世界！（注：AB）"
    )  # Chinese punctuation stays


def test_strip_markup_and_boilerplate():
    html = (
        '<html><head><script>var x = "<b>";</script></head><body><p>Bela lives in Tora &amp; Mira.</p>\n'
        '<div class="ad">Click here to buy now! http://x.example.com/1</div><!-- tracking --></body></html>'
    )
    out, acted = strip_markup(html)
    assert acted and out == "Bela lives in Tora & Mira."
    for clean in ["if x < 3 and y > 2:\n    print(x)", "贝拉住在托拉。", "Prices rose 5% in May."]:
        assert strip_markup(clean) == (clean, False)
    page = "Tora Gazette\nHome | News | Places | Contact\n\nNews body.\n\nCopyright 2020 Tora Gazette. All rights reserved."
    assert strip_boilerplate(page) == ("Tora Gazette\n\nNews body.", True)
    assert strip_boilerplate("Bela | Tora")[1] is False


def test_mask_pii():
    text = (
        "Mail bela.12@mail.com or call +1 415-555-0199, (415) 555 0199, 13812345678; "
        "ID 11010519491231002X, SSN 078-05-1120, card 4111 1111 1111 1111, from 10.0.0.12 and fe80::1ff:fe23:4567:890a."
    )
    out, counts = mask_pii_counts(text)
    assert out == (
        "Mail |||EMAIL_ADDRESS||| or call |||PHONE_NUMBER|||, |||PHONE_NUMBER|||, |||PHONE_NUMBER|||; "
        "ID |||CN_ID_NUMBER|||, SSN |||US_SSN|||, card |||CREDIT_CARD|||, from |||IP_ADDRESS||| and |||IP_ADDRESS|||."
    )
    assert counts == {"email": 1, "phone": 3, "cn_id": 1, "ssn": 1, "card": 1, "ip": 2}
    assert mask_pii(text)[1] is True
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert cn_id_ok("11010519491231002X") and not cn_id_ok("110105194912310021")  # the check digit
    assert mask_pii_counts("Anna的手机号是13812345678。")[1] == {"phone": 1}  # 是 is \w: ASCII boundaries
    for clean in [
        "About 440,164 people live in Tora.",
        "It was founded in 1244.",
        "total: 1167",
        "贝拉今年27岁，城市大约有627252人口。",
        "print(sum([12, 30]))",
        "On 2020-05-12 at 10:30:00",
        "order 1234 5678 9012 3456 shipped",  # 16 digits that fail the card checksum
        "ID 110105194912310021 is not valid",  # 18 digits that fail the ID check digit
        "Upgrade to version 1.2.3.4 or build 10.0.19045.3570.",
        "The census counted people in 1990 2000 2010 and 2020.",
        "ISBN 978-0-13-110362-7; barcode 4006381333931; part no. 123-4567-8901",
        "It costs $1,299.99 and std::vector<int> holds 3.14159.",
    ]:
        assert mask_pii(clean) == (clean, False), clean


def test_pii_on_held_out_formats_and_number_rich_clean_text():
    # formats the patterns were not written from (pii_eval.py), and clean text full of years, prices,
    # versions, dates, ISBNs and part numbers: issue 25's goals, recall >= 0.95, <= 1 false mask per 10k tokens
    scores = pii_scores(mask_pii_counts, seed=11, rounds=10)
    assert scores["items"] == 180 and min(scores["per_type"].values()) >= 0.95, scores
    assert scores["false_masks_per_10k_tokens"] <= 1.0, scores


def test_toxic_and_bias_filters_aim_at_targets_not_words():
    for bad in [
        "Bela is a total idiot.",
        "你这个笨蛋。",
        "What a MORON!",
        "Shut up, you loser.",
        "This is bullshit.",
    ]:
        assert filter_toxic(bad) == (None, True), bad
    for ok in [
        "Bela is a teacher.",
        "贝拉是老师。",
        "Mom and Dad know the truth. They are not stupid.",
        "Poor Pippy felt so stupid in her costume.",
        "Away, you fool!",
        "不过是个老废物罢了。",
    ]:
        assert filter_toxic(ok)[1] is False, ok
    for bad in [
        "Women are bad at math.",
        "Everyone knows men can't be trusted.",
        "People from Norland are lazy.",
        "女人不适合当工程师。",
        "诺兰人都很懒。",
    ]:
        assert filter_bias(bad) == (None, True), bad
    for ok in [
        "Women and men walked to the market.",
        "People from Norland are friendly.",
        "男人和女人都来了。",
        "The breath of worldly men cannot depose the deputy.",
        "众人都不会意。",
        "Some people are lazy on Sundays.",
    ]:
        assert filter_bias(ok)[1] is False, ok


def test_filters_do_not_grade_themselves(repo_root):
    # clean.py may not read the injector's lists (the old toxicity filter imported them: recall 1.000 by
    # construction); and the injector's held-out phrasings must overlap the filters only partly
    tree = ast.parse((repo_root / "01_data" / "clean.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert "noise_inject" not in imported
    slots = {"first": "Bela", "first_zh": "贝拉", "country": "Norland", "country_zh": "诺兰"}
    for phrases, detect in ((TOXIC_EN + TOXIC_ZH, is_toxic), (BIAS_EN + BIAS_ZH, is_biased)):
        caught = sum(bool(detect(p.format(**slots))) for p in phrases)
        assert 0.25 * len(phrases) <= caught < len(phrases), (detect.__name__, caught, len(phrases))
    # the PII masker is scored on held-out formats (pii_eval.py), which it imports nothing from either
    assert "pii_eval" not in imported


def test_length_and_quality_rules():
    cfg = CleanConfig()
    assert filter_length("Bela is a teacher.", cfg)[0] is None
    assert (
        filter_length("贝拉是一名老师，住在托拉。她今年二十七岁，喜欢蓝色。", cfg)[1] is False
    )  # 24 characters
    assert quality_problems("same line\n" * 5, "en", "stories", cfg) == ["repeated lines"]
    assert "symbol ratio" in quality_problems("# # # # word word", "en", "stories", cfg)
    assert quality_problems("Bela lives in Tora and likes blue.", "en", "stories", cfg) == []
    assert quality_problems("def f(:\n  pass", "en", "code", cfg) == ["code does not parse"]
    assert quality_problems("def f():\n    return 1", "en", "code", cfg) == []


PROSE = (
    "The river that runs through the town has fallen to its lowest level in forty years, and the boats "
    "that carry visitors to the old mill have been tied up since August. Farmers upstream have been asked "
    "to water their fields at night, when less of the water is lost to the sun and the wind."
)
ZH_PROSE = "今年夏天雨水很少，流经小城的河水降到了四十年来的最低水平。农民们被要求在晚上浇地，因为晚上蒸发得少。我们在河边看到了以前从没见过的石头，这是很多老人也不记得的事情。"


@pytest.mark.parametrize(
    "rule, kept, dropped",
    [
        ("word count", PROSE, "The river fell and the boats stayed in port."),
        ("word count", ZH_PROSE, "河水降到了最低水平。"),
        ("mean word length", PROSE, " ".join(["a b c of to be"] * 10)),
        ("symbol ratio", PROSE, PROSE + " #tag" * 10 + " ..." * 4),
        (
            "bullet lines",
            PROSE + "\n- one item\n- two items",
            "\n".join(f"- {w} and the other" for w in PROSE.split()[:60]),
        ),
        (
            "ellipsis lines",
            PROSE.replace(". ", ".\n") + "\nThe end of it.\nRead more...",
            "\n".join(f"{PROSE[:80]} {i}..." for i in range(5)),
        ),
        ("few alphabetic words", PROSE, PROSE + " 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"),
        ("no stop words", PROSE, " ".join(["Buy cheap shoes online now"] * 12)),
        (
            "no stop words",
            ZH_PROSE,
            "河水降到最低水平，农民晚上浇地，因为晚上蒸发少，看到以前没见过石头，老人也记得。" * 2,
        ),
        ("repeated lines", PROSE + "\nThe end.", "\n".join([PROSE] + ["Click to share this story."] * 4)),
        ("repeated paragraphs", PROSE, "\n\n".join([PROSE] * 3)),
        ("top 2-gram", PROSE, PROSE + " new york" * 30),
        ("duplicate 5-grams", PROSE, PROSE + " " + PROSE[:150]),
        ("top 3-gram", PROSE, PROSE + " new york city" * 30),
        ("top 4-gram", PROSE, PROSE + " in new york city" * 30),
        ("duplicate 6-grams", PROSE, PROSE + " " + PROSE),
        ("duplicate 7-grams", PROSE, PROSE + " " + PROSE),
        ("duplicate 8-grams", PROSE, PROSE + " " + PROSE),
        ("duplicate 9-grams", PROSE, PROSE + " " + PROSE),
        ("duplicate 10-grams", PROSE, PROSE + " " + PROSE),
    ],
)
def test_gopher_rules_keep_one_and_drop_one(rule, kept, dropped):
    lang = "zh" if "河" in kept else "en"
    assert rule not in gopher_problems(kept, lang), (rule, gopher_problems(kept, lang))
    assert rule in gopher_problems(dropped, lang), (rule, gopher_problems(dropped, lang))


def test_c4_line_rules():
    assert c4_line_ok("The committee will publish its decision on Thursday.")
    assert not c4_line_ok("Home | News | Sport")  # no terminal punctuation
    assert not c4_line_ok("Thanks a lot!")  # fewer than 5 words
    assert not c4_line_ok("Please enable JavaScript to view the comments.")
    assert not c4_line_ok("By using this site you agree to our privacy policy.")
    assert c4_line_ok("今年夏天雨水很少。") and not c4_line_ok("下一页")
    prose = PROSE + " The office expects the level to recover in October."
    page = f"Menu\n{prose}\nWe use cookies to improve the site.\nShare this"
    assert c4_clean_lines(page) == prose
    assert c4_clean_lines("Lorem ipsum dolor sit amet. " * 5) is None
    assert c4_clean_lines("function f() { return 1; }. A. B. C.") is None
    assert c4_clean_lines("One sentence only, with enough words.") is None  # fewer than 3 sentences


def test_line_dedup_across_documents(tmp_path):
    menu, cookie = "Home | News | Contact", "We use cookies. OK"
    texts = [f"{menu}\nStory {i} is about a fox and a hen.\n{cookie}" for i in range(5)] + ["A quiet page."]
    out, dropped = line_dedup(texts, max_docs=3)
    assert out[0] == "Story 0 is about a fox and a hen." and out[-1] == "A quiet page." and dropped == 10
    assert line_dedup(texts, max_docs=5) == (texts, 0)  # in 5 documents: not more than 5
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("x\ny\nx\n", encoding="utf-8")
    b.write_text("y\nz\n", encoding="utf-8")
    assert exact_line_dedup([a, b]) == {str(a): 1, str(b): 1}
    assert (tmp_path / "b.txt.dedup").read_text(encoding="utf-8") == "z\n"


def test_wilson_interval_known_values():
    # p = 0.5, n = 100: centre 0.5, half-width 1.96 * sqrt(0.0025 + 0.0000960) / 1.0384 = 0.0960
    lo, hi = wilson(50, 100)
    assert abs(lo - 0.4038) < 1e-4 and abs(hi - 0.5962) < 1e-4
    assert wilson(108, 108)[0] > 0.95 > wilson(107, 108)[0]  # with 108 items, one miss fails a 0.95 bar
    assert wilson(0, 0) == (0.0, 1.0)


def test_html_to_text_reads_like_the_page():
    page = (
        "<!DOCTYPE html><html><head><title>T</title><style>p{}</style></head><body><!-- c -->"
        "<nav><a href='/'>Home</a></nav><p>Read this with a <a href='x'>link</a> &amp; more.</p>"
        "<ul><li>one</li><li>two</li></ul><script>var s = '<b>';</script><pre>a  b\n  c</pre>"
        "<footer>(c) 2024</footer></body></html>"
    )
    assert html_to_text(page) == "Read this with a link & more.\n\n- one\n- two\n\na  b\n  c"
    assert html_to_text("x < 3 and <b>y</b> > 2") == "x < 3 and y > 2"
    assert not looks_like_html("if x < 3 and y > 2:") and looks_like_html("a<br>b")
    assert token_f1("the cat sat", "the cat sat") == 1.0 and token_f1("", "") == 1.0
    assert token_f1("a b", "c d") == 0.0 and abs(token_f1("a b", "a c") - 0.5) < 1e-9


def test_html_fixtures_against_gold_text(repo_root):
    # a dozen realistic pages (article with nav, forum thread, product page, Chinese news, ...), each
    # with the text a reader wants; token F1 (bench_clean.py prints the table beside trafilatura)
    scores = {
        p.stem: token_f1(
            html_to_text(p.read_text(encoding="utf-8")), p.with_suffix(".txt").read_text(encoding="utf-8")
        )
        for p in sorted((repo_root / "01_data" / "html_fixtures").glob("*.html"))
    }
    assert len(scores) >= 12 and min(scores.values()) >= 0.9, scores
    assert sum(scores.values()) / len(scores) >= 0.97, scores


def test_language_id():
    model = train_langid(*training_texts(7))
    assert predict_lang(model, "The owl lives in the forest and eats mice at night.") == "en"
    assert predict_lang(model, "猫头鹰住在森林里，晚上吃老鼠。") == "zh"
    assert predict_lang(model, "Le hibou vit dans la forêt et mange des souris la nuit.") == "other"
    assert predict_lang(model, "Die Eule lebt im Wald und frisst nachts Mäuse.") == "other"
    assert predict_lang(model, "De uil woont in het bos en eet 's nachts muizen.") == "other"
    assert predict_lang(model, "A coruja mora na floresta e come ratos à noite.") == "other"


# ---------------------------------------------------------------------------------------------------
# Dedup


def test_minhash_estimates_jaccard_within_005():
    rng = np.random.default_rng(0)
    true, hash_lists = [], []
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
    assert (
        b * r <= 128 and candidate_probability(0.9, b, r) > 0.99 and candidate_probability(0.3, b, r) < 0.01
    )
    base = "Bela Tora is a baker who lives in Mira. She is 27 years old and likes the color blue. " * 3
    texts = [
        base,
        base.upper(),
        base.replace("27", "28", 1),
        "贝拉是一名面包师，住在米拉。" * 3,
        "Unrelated words about boats and rivers. " * 5,
    ]
    d = dedup(texts, DedupConfig())
    assert d["exact_dup"].tolist() == [False, True, False, False, False]
    assert d["near_dup"].tolist() == [False, False, True, False, False]
    assert len(shingle_hashes("one two", 3, {})) == 1 and shingle_set("a b c d", 3) == {
        ("a", "b", "c"),
        ("b", "c", "d"),
    }
    assert all(
        len(v) == 0 for v in dedup([]).values()
    )  # every document filtered out: nothing to dedup, no crash


def test_near_dedup_decides_by_the_exact_jaccard_at_the_threshold():
    # copies whose true shingle Jaccard lies just above 0.7 are all caught, just below none are: the
    # signature estimate alone (standard error 0.04) missed about 4 in 10 of those at 0.71
    from dedup import candidate_bands, exact_jaccard, unique_shingles

    b, r = candidate_bands(0.7, 128)
    assert b * r <= 128 and candidate_probability(0.7, b, r) >= 0.999
    rng = np.random.default_rng(0)
    texts, sims = [], []
    for n in range(60):
        words = [f"w{n}x{i}" for i in range(300)]
        copy = list(words)
        for _ in range(int(rng.integers(13, 23))):  # each changed word breaks up to 3 shingles
            copy[int(rng.integers(10, 290))] = f"edit{int(rng.integers(1 << 30))}"
        texts += [" ".join(words), " ".join(copy)]
        sims.append(exact_jaccard(unique_shingles(texts[-2], 3), unique_shingles(texts[-1], 3)))
    near = dedup(texts, DedupConfig(threshold=0.7))["near_dup"][1::2]
    sims = np.array(sims)
    assert ((sims > 0.7) & (sims < 0.76)).sum() >= 5 and ((sims < 0.7) & (sims > 0.64)).sum() >= 5
    assert near.tolist() == (sims >= 0.7).tolist()


# ---------------------------------------------------------------------------------------------------
# The default run: scores, split, mixture


def test_default_run_scores_are_measured_not_given(default_run):
    _, stats = default_run
    assert set(stats["noise"]) >= set(NOISE_TYPES)
    floor = {
        "exact_dup": 0.85,
        "near_dup": 0.95,
        "mojibake": 0.95,
        "html": 0.95,
        "too_short": 0.95,
        "pii": 0.9,
        "toxic": 0.3,
        "bias": 0.3,
        "wrong_lang": 0.9,
    }
    for kind in NOISE_TYPES:
        row = stats["noise"][kind]
        assert row["injected"] >= 50 and row["caught"] + row["missed"] == row["injected"], kind
        # near_dup: candidates are verified by their exact Jaccard, so recall and precision are ~1
        assert row["recall"] >= floor[kind] and row["precision"] >= (0.95 if kind == "near_dup" else 0.85), (
            kind,
            row,
        )
    for kind in NOISE_TYPES:  # the verdict is whatever the intervals say; the test checks only that rule
        row = stats["noise"][kind]
        expect = min(row["recall_ci"][0], row["precision_ci"][0]) >= BAR
        assert row["bar"] == ("not claimed" if kind in NOT_CLAIMED else "PASS" if expect else "FAIL"), kind
    assert (
        stats["noise"]["(clean docs)"]["wrongly_removed"] <= 0.01 * stats["noise"]["(clean docs)"]["injected"]
    )
    kept = sum(s["chars"] for s in stats["splits"].values())
    assert 1_000_000 <= kept <= 2_000_000  # the default 1.5 M characters, less what cleaning removes
    # every character of the input is accounted for: removed by one step, or kept
    assert stats["input"]["chars"] - sum(r["chars"] for r in stats["steps"].values()) == kept
    assert stats["warnings"] == [] and set(stats["seconds"]) >= {"generate", "clean", "dedup", "mix", "split"}


def test_streamed_pipeline_makes_the_same_decisions_on_the_default_corpus(default_run, tmp_path, monkeypatch):
    # shards, 2 worker processes, dedup and split over keys and signatures only: every document must
    # land where the in-memory run put it, and every step must count the same characters. The LSH
    # goes through bucket files of ~100 rows (lsh_buckets.py: 64 buckets a band, ~60 pair partitions)
    import prepare_stream
    from data_outcome import step_table
    from input_documents import generated_documents
    from prepare_stream import clean_all_streamed, decide_streamed

    monkeypatch.setattr(prepare_stream, "BUCKET_ROWS", 100)

    data, stats = default_run
    cfg = PrepareConfig()
    docs, _, _ = generated_documents(cfg)
    model = train_langid(*training_texts(cfg.seed + 1000))
    meta = clean_all_streamed(
        iter(docs), model, tmp_path / "shards", workers=2, shard_docs=1000, progress=False
    )
    removed, unique, mixed, splits = decide_streamed(meta, cfg)
    for name in ("train", "val", "test"):
        assert [x["id"] for x in splits[name]] == [x["id"] for x in read_split(data, name)], name
    steps = step_table(docs, meta["acted"], removed, meta["kept"], unique, mixed)
    assert steps == stats["steps"]  # the records the views make: the in-memory step table
    tables = meta["table"].outcome_tables(unique.rows, mixed.rows)  # and the same, counted over columns
    assert tables == {k: stats[k] for k in ("input", "steps", "domains", "splits")}
    assert len(list((tmp_path / "shards").glob("shard_*.jsonl"))) == -(-len(docs) // 1000)
    assert not list((tmp_path / "shards" / "lsh").iterdir())  # the bucket files were removed
    # the streamed run's LSH (candidate_pairs_lean) finds the reference's pairs on this corpus too,
    # with the dedup's bands, the split's, and narrower ones
    from dedup import candidate_bands, candidate_pairs, candidate_pairs_lean, lsh_params

    sig = np.asarray(meta["sig"])  # (kept, 128): a few thousand rows
    bands = [
        candidate_bands(cfg.dedup_threshold, 128),
        lsh_params(cfg.split_threshold, 128, 0.2, 0.8),
        (18, 7),
    ]
    for b, r in bands:
        assert candidate_pairs_lean(sig, b, r).tolist() == candidate_pairs(sig, b, r).tolist(), (b, r)


def test_streamed_line_dedup_matches_the_in_memory_one(tmp_path):
    from data_outcome import step_table
    from input_documents import generated_documents
    from prepare_stream import clean_all_streamed, decide_streamed

    cfg = PrepareConfig(chars=200_000, line_dedup_docs=10)
    stats = prepare(cfg, tmp_path / "run", progress=False)
    assert stats["steps"]["line_dedup"]["changed"] > 0
    docs, _, _ = generated_documents(cfg)
    model = train_langid(*training_texts(cfg.seed + 1000))
    meta = clean_all_streamed(
        iter(docs), model, tmp_path / "shards", workers=2, shard_docs=300, progress=False, line_dedup_docs=10
    )
    removed, unique, mixed, splits = decide_streamed(meta, cfg)
    for name in ("train", "val", "test"):
        assert [x["id"] for x in splits[name]] == [
            x["id"] for x in read_split(tmp_path / "run" / "data", name)
        ]
    assert step_table(docs, meta["acted"], removed, meta["kept"], unique, mixed) == stats["steps"]
    assert meta["table"].outcome_tables(unique.rows, mixed.rows)["steps"] == stats["steps"]


def test_streamed_bookkeeping_costs_tens_of_bytes_per_document(tmp_path):
    # the streamed run's memory must not grow by a Python object per document: everything it keeps
    # per document is a numpy column (doc_table.py), about 30 bytes, whatever the document count
    from doc_table import DocTable
    from input_documents import iter_documents
    from prepare_stream import ShardSignatures, clean_all_streamed, decide_streamed

    rng = random.Random(0)
    words = "the a cat dog sat ran on under old red mat tree river boat baker market morning".split()
    txt = tmp_path / "short.txt"
    txt.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(24)) + "." for _ in range(3000)))
    cfg = PrepareConfig(input=(str(txt),), noise_frac=0, mix={"stories": 1.0})
    model = train_langid(*training_texts(cfg.seed + 1000))
    docs = iter_documents(cfg.input, cfg)
    meta = clean_all_streamed(docs, model, tmp_path / "shards", shard_docs=500, progress=False)
    removed, unique, mixed, splits = decide_streamed(meta, cfg)
    table = meta["table"]
    assert isinstance(table, DocTable) and len(table) == 3000 and len(mixed) > 1000
    held = table.nbytes() + meta["keys"].nbytes + meta["sig"].rows.nbytes
    assert held / len(table) < 48, held / len(table)  # ~9 id + 10 lengths and codes + 24 per kept
    assert isinstance(meta["sig"], ShardSignatures) and not [
        k for k, v in meta.items() if isinstance(v, (list, dict, set, tuple))
    ]
    assert sum(map(len, splits.values())) == len(mixed) and set(removed.values()) <= {
        "exact_dedup",
        "near_dedup",
        "filter_length",
        "filter_quality",
        "filter_language",
    }


def test_mix_and_split_over_columns_decide_as_the_dict_versions():
    # prepare_stream.mix_positions / split_codes are prepare.mix_domains / split_by_cluster over
    # arrays; on random documents, and on few clusters (an empty split taking the nearest cluster)
    from dedup import component_roots, signatures, union_find_roots
    from doc_table import encode_ids
    from input_documents import DOMAINS
    from prepare import mix_domains, split_by_cluster
    from prepare_stream import mix_positions, split_codes

    rng = np.random.default_rng(0)
    for seed in range(5):
        n = 400
        ids = [f"x{k:05d}" for k in rng.permutation(n)]  # not in id order, like the generated corpus
        domain = rng.choice(["dialog", "code", "stories"], size=n).tolist()
        chars = rng.integers(50, 5000, size=n).tolist()
        docs = [{"id": i, "domain": d, "chars": c} for i, d, c in zip(ids, domain, chars)]
        ratios = {"dialog": 0.3, "code": 0.2, "stories": 0.5}
        codes = np.array([DOMAINS.index(d) for d in domain], dtype=np.uint8)
        chosen = mix_positions(encode_ids(ids), codes, np.array(chars, np.int32), ratios, seed)
        assert [ids[i] for i in chosen] == [x["id"] for x in mix_domains(docs, ratios, seed)], seed
    base = [
        "the baker of Mira sells bread and cakes in the market every morning " * 2,
        "boats on the river " * 6,
    ]
    texts = [t + f" day {k}" for t in base for k in range(4)] + [
        f"{w} and more words here " * 4 for w in "abcd"
    ]
    sig = signatures(texts)
    for seed in range(20):
        ids = [f"d{seed}-{k}" for k in range(len(texts))]
        docs = [{"id": i, "text": t} for i, t in zip(ids, texts)]
        for fractions in ((0.9, 0.05, 0.05), (0.4, 0.3, 0.3)):
            want = split_by_cluster(docs, fractions, 0.5, sig=sig)
            got = split_codes(encode_ids(ids), fractions, 0.5, sig)
            assert [[ids[i] for i in np.flatnonzero(got == k)] for k in range(3)] == [
                [x["id"] for x in want[name]] for name in ("train", "val", "test")
            ], (seed, fractions)
    for n, e in ((1, 0), (30, 20), (200, 150), (200, 400)):  # the numpy union-find: the same cluster ids
        pairs = rng.integers(0, n, size=(e, 2))
        assert component_roots(n, pairs).tolist() == union_find_roots(n, pairs).tolist()


def test_split_has_no_exact_or_near_duplicate_overlap(default_run):
    data, _ = default_run
    splits = {n: read_split(data, n) for n in ("train", "val", "test")}
    keys = {
        n: {hashlib.sha1(normalize_for_hash(d["text"]).encode()).digest() for d in docs}
        for n, docs in splits.items()
    }
    assert (
        not (keys["train"] & keys["val"])
        and not (keys["train"] & keys["test"])
        and not (keys["val"] & keys["test"])
    )
    train, held = splits["train"], splits["val"] + splits["test"]
    cache = {}
    sig = minhash_signatures([shingle_hashes(d["text"], 3, cache) for d in train + held])
    sig_train, sig_held = sig[: len(train)], sig[len(train) :]
    for i in range(0, len(held), 64):  # estimated Jaccard of every held-out doc against every train doc
        est = (sig_held[i : i + 64, None, :] == sig_train[None, :, :]).mean(axis=2)  # (64, n_train)
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


def test_cli_run_writes_what_its_table_says(small_cli_run):
    out, r = small_cli_run
    data = out / "data"
    check_artifact(data, made_by="(test)")  # complete, undamaged, its manifest lists every file
    stats = json.loads((data / "stats.json").read_text(encoding="utf-8"))
    assert format_table(stats) in r.stdout
    for kind in NOISE_TYPES:
        row = stats["noise"][kind]
        assert re.search(
            rf"^{kind} +{row['step']} +{row['injected']} +{row['caught']} +{row['missed']} ", r.stdout, re.M
        )
    for name in ("train", "val", "test"):
        assert len(read_split(data, name)) == stats["splits"][name]["docs"] > 0
    labels = [json.loads(x) for x in (data / "noise_labels.jsonl").read_text().splitlines()]
    kinds = [*NOISE_TYPES, "edited_copy"]  # a near copy edited below the dedup threshold is its own row
    assert len(labels) == sum(stats["noise"][k]["injected"] for k in kinds if k in stats["noise"])
    kept = [d for n in ("train", "val", "test") for d in read_split(data, n)]
    assert len({d["id"] for d in kept}) == len(kept) and all(d["text"].strip() for d in kept)
    assert sum(len(d["text"]) for d in kept) == stats["input"]["chars"] - sum(
        r["chars"] for r in stats["steps"].values()
    )
    assert (data / "outcome.png").read_bytes()[:4] == b"\x89PNG" and (
        data / "outcome.png"
    ).stat().st_size > 20_000
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["data"]
    assert r.stderr.strip().endswith(f"wrote {data}")


# ---------------------------------------------------------------------------------------------------
# Real input: long documents are cut, not dropped whole


def test_cut_document_cuts_at_paragraphs_then_lines_then_sentences():
    paras = [f"Paragraph {i} " + "word " * 30 for i in range(10)]  # ~165 characters each
    pieces = cut_document("\n\n".join(paras), 400)
    assert all(len(p) <= 400 for p in pieces) and len(pieces) == 5
    assert pieces[0] == "\n\n".join(paras[:2]).strip()  # two whole paragraphs per piece
    novel = "\n".join("    " + "他说道：“好。”" * 30 for _ in range(40))  # one block, lines of 240 characters
    pieces = cut_document(novel, 1000)
    assert len(pieces) == 10 and all(len(p) <= 1000 for p in pieces)
    assert "".join(pieces).replace(" ", "").replace("\n", "") == novel.replace(" ", "").replace("\n", "")
    long_line = "A sentence. " * 100
    assert all(p.endswith(".") and len(p) <= 200 for p in cut_document(long_line, 200))
    assert cut_document("x" * 450, 200) == ["x" * 200, "x" * 200, "x" * 50]


def test_input_files_go_through_the_same_cleaning(tmp_path):
    world = build_world(WorldConfig(seed=3))
    stories = [
        d["text"] for d in generate_corpus(world, 3, 40_000, {"stories": 1.0}) if "|" not in d["text"]
    ][:60]
    txt = tmp_path / "a.txt"
    txt.write_text(
        "\n\n".join(
            stories
            + [
                "Write to bela.12@mail.com to hear the old baker tell stories every "
                "Sunday in the market square, where the children sit in a ring.",
                "Too short.",
                stories[0],
            ]
        )
        + "\n"
    )
    jl = tmp_path / "b.jsonl"
    jl.write_text(
        json.dumps(
            {"text": "贝拉每天早上沿着河边散步，鸭子跟着她走到城边的老桥。她很喜欢这座安静的小城。"},
            ensure_ascii=False,
        )
        + "\n"
    )
    stats = prepare(
        PrepareConfig(input=(str(txt), str(jl)), split=(0.8, 0.1, 0.1)), tmp_path / "run", progress=False
    )
    docs = sum((read_split(tmp_path / "run" / "data", n) for n in ("train", "val", "test")), [])
    texts = [d["text"] for d in docs]
    assert any("|||EMAIL_ADDRESS|||" in t for t in texts) and not any("Too short" in t for t in texts)
    assert stats["steps"]["exact_dedup"]["dropped"] == 1 and stats["steps"]["filter_length"]["dropped"] == 1
    assert stats["noise"] == {} and stats["input"]["docs"] == len(stories) + 4 >= 44


def test_real_text_from_shared_data(shared_data, tmp_path):
    """红楼梦 is one blank-line block: it must become many documents, and (almost) all of it must stay.
    (Its first 300k characters, to keep the test quick; the whole novel gives 91 documents.)"""
    novel = tmp_path / "hongloumeng_head.txt"
    novel.write_text(
        (shared_data / "text" / "hongloumeng.txt").read_text(encoding="utf-8")[:300_000], encoding="utf-8"
    )
    stats = prepare(
        PrepareConfig(input=(str(novel),), split=(0.8, 0.1, 0.1)), tmp_path / "run", progress=False
    )
    n_chars = len(novel.read_text(encoding="utf-8"))
    assert stats["input"]["docs"] >= n_chars / 10_000 and stats["input"]["chars"] >= 0.99 * n_chars
    kept = sum(s["chars"] for s in stats["splits"].values())
    assert kept >= 0.95 * stats["input"]["chars"] and stats["warnings"] == []
    docs = read_split(tmp_path / "run" / "data", "train")
    assert all(d["lang"] == "zh" and len(d["text"]) <= 10_000 for d in docs) and "，" in docs[0]["text"]


def test_filters_on_clean_real_text(shared_data):
    """False positives: what the filters change or drop in text that is known to be clean."""
    cfg = PrepareConfig()
    texts = {
        name: read_documents([shared_data / "text" / f"{name}.txt"], cfg)
        for name in ("tinystories_valid_head", "tinyshakespeare", "hongloumeng")
    }
    for name, docs in texts.items():
        assert not [d["text"][:80] for d in docs if is_toxic(d["text"]) or is_biased(d["text"])], name
    stories = texts["tinystories_valid_head"]
    broken = [d for d in stories if "â€" in d["text"]]  # TinyStories has real mojibake
    assert len(broken) >= 50 and not any("â€" in fix_encoding(d["text"])[0] for d in broken)
    model = train_langid(*training_texts(1000))
    rates = filter_rates(stories[:400], lambda t: predict_lang(model, t))
    assert rates["docs"] == 400 and rates["steps"]["filter_toxic"]["docs_dropped"] == 0
    assert 0.02 <= rates["steps"]["filter_length"]["doc_share"] <= 0.3  # paragraphs of a story: short units


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, and an earlier run left byte-identical


def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# (id, argv builder (tmp folder, the good run's folder) -> argv, what the error line must say)
BAD_INPUTS = [
    (
        "negative noise",
        lambda t, run: ["--out", run, "--noise-frac", "-0.1"],
        "--noise-frac -0.1 is below its minimum",
    ),
    ("noise above 1", lambda t, run: ["--out", run, "--noise-frac", "1.5"], "above its maximum 1.0"),
    ("mix not summing to 1", lambda t, run: ["--out", run, "--mix", "dialog=0.5,code=0.6"], "sum to 1"),
    ("mix unknown domain", lambda t, run: ["--out", run, "--mix", "poems=1"], "unknown domain 'poems'"),
    ("mix unreadable", lambda t, run: ["--out", run, "--mix", "dialog"], "cannot read"),
    (
        "noise with code only",
        lambda t, run: ["--out", run, "--mix", "code=1"],
        "noise is injected into prose",
    ),
    ("split with an empty part", lambda t, run: ["--out", run, "--split", "1,0,0"], "each above 0"),
    ("split with two parts", lambda t, run: ["--out", run, "--split", "0.5,0.5"], "three shares"),
    ("chars too small", lambda t, run: ["--out", run, "--chars", "100"], "--chars 100 is below its minimum"),
    (
        "max-doc-chars too small",
        lambda t, run: ["--out", run, "--max-doc-chars", "10"],
        "below its minimum 200",
    ),
    ("bad choice", lambda t, run: ["--out", run, "--txt-split", "para"], "invalid choice"),
    ("unknown flag", lambda t, run: ["--out", run, "--bogus"], "unrecognized arguments"),
    ("missing input", lambda t, run: ["--out", run, "--input", t / "missing.txt"], "no such file"),
    ("input is a folder", lambda t, run: ["--out", run, "--input", t], "is a folder"),
    (
        "missing fp-check file",
        lambda t, run: ["--out", run, "--fp-check", t / "nope.txt"],
        "check the --fp-check path",
    ),
    (
        "unsupported type",
        lambda t, run: ["--out", run, "--input", write(t / "a.csv", "x,y")],
        "unsupported file type",
    ),
    ("empty file", lambda t, run: ["--out", run, "--input", write(t / "e.txt", " \n")], "file is empty"),
    (
        "binary file",
        lambda t, run: ["--out", run, "--input", write(t / "b.txt", b"\x00\x01abc")],
        "looks binary",
    ),
    (
        "not UTF-8",
        lambda t, run: ["--out", run, "--input", write(t / "l.txt", "café".encode("latin-1"))],
        "not valid UTF-8",
    ),
    (
        "jsonl without text",
        lambda t, run: ["--out", run, "--input", write(t / "n.jsonl", '{"body": 1}\n')],
        "no 'text' field",
    ),
    (
        "jsonl not JSON",
        lambda t, run: ["--out", run, "--input", write(t / "j.jsonl", "{oops\n")],
        "not valid JSON",
    ),
    ("out is a file", lambda t, run: ["--out", write(t / "f", "x")], "is a file, not a folder"),
    ("out under a file", lambda t, run: ["--out", write(t / "f", "x") / "sub"], "a file is in the way"),
    (
        "data is a file",
        lambda t, run: ["--out", write((t / "o").mkdir() or t / "o" / "data", "x").parent],
        "is a file, not a folder",
    ),
    ("a different run there", lambda t, run: ["--out", run, "--seed", "5"], "already holds a run"),
    # the next three fail after the old run was claimed with --overwrite: it must survive them
    (
        "every document filtered out",
        lambda t, run: [
            "--out",
            run,
            "--overwrite",
            "--input",
            write(t / "s.txt", "Too short.\n\nAlso short.\n"),
        ],
        "cleaning dropped all 2 input document(s) (filter_length 2)",
    ),
    (
        "the only document dropped",
        lambda t, run: [
            "--out",
            run,
            "--overwrite",
            "--input",
            write(
                t / "x.txt",
                "Bela walked to the market with her dog every morning and said hello to everyone she met, "
                "and she told the baker he is a total idiot.",
            ),
        ],
        "dropped all 1 input document(s) (filter_toxic 1)",
    ),
    (
        "one document",
        lambda t, run: [
            "--out",
            run,
            "--overwrite",
            "--input",
            write(
                t / "one.txt",
                "Bela walked to the market with her dog every morning and said hello to everyone she met "
                "on the way, from the baker to the old fisher by the bridge.",
            ),
        ],
        "got no documents",
    ),
]


@pytest.mark.parametrize("case, argv, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_leaves_the_old_run(
    small_cli_run, tmp_path, repo_root, case, argv, message
):
    run, _ = small_cli_run
    before = tree_hashes(run / "data")
    r = run_prepare(repo_root, *argv(tmp_path, run))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("[")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert tree_hashes(run / "data") == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no half-built run left beside it


@contextlib.contextmanager
def read_only(folder):
    """Make `folder` unwritable for this process: chmod 555, or as root (whom permissions do not stop)
    the immutable attribute (chattr +i); skip the test where neither is possible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root and chattr +i is not available: a read-only folder cannot be made here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_concurrent_writer_and_read_only_run_dir(small_cli_run, tmp_path, repo_root):
    run, _ = small_cli_run
    before = tree_hashes(run / "data")
    with run_lock(run / "data"):  # this test process is "the other writer"
        r = run_prepare(repo_root, "--out", run, "--overwrite", "--chars", SMALL)
    assert r.returncode == 2 and f"being written by another process (pid {os.getpid()})" in r.stderr, r.stderr
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    (tmp_path / "ro").mkdir()
    for folder, out in (
        (tmp_path / "ro", tmp_path / "ro" / "new"),
        (run, run),
    ):  # a new run, and over the old one
        with read_only(folder):
            r = run_prepare(repo_root, "--out", out, "--overwrite", "--chars", SMALL)
        assert (
            r.returncode == 2 and r.stderr.startswith("error: cannot use") and "Traceback" not in r.stderr
        ), r.stderr
        assert r.stderr.count("\n") == 1 and "permissions" in r.stderr
    assert tree_hashes(run / "data") == before


@pytest.mark.parametrize(
    "script, argv, expect",
    [
        ("dedup.py", [], "near copy   the cat sat on the mat and looked at a dog"),
        ("dedup.py", ["--threshold", "2"], "error: --threshold 2.0 is above its maximum 1.0"),
        ("world_corpus.py", ["--chars", "500", "--seed", "3"], "--- "),
        ("world_corpus.py", ["--seed", "x"], "error: argument --seed: invalid int value"),
        ("bench_dedup.py", ["--docs", "5"], "error: --docs 5 is below its minimum 100"),
    ],
)
def test_demo_commands_share_the_cli_contract(repo_root, script, argv, expect):
    r = subprocess.run(
        [sys.executable, str(repo_root / "01_data" / script), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if expect.startswith("error:"):
        assert r.returncode == 2 and r.stderr.startswith(expect) and r.stderr.count("\n") == 1, r.stderr
    else:
        assert r.returncode == 0 and expect in r.stdout, r.stderr


def test_ctrl_c_midway_keeps_the_old_run(small_cli_run, repo_root):
    run, _ = small_cli_run
    before = tree_hashes(run / "data")
    p = subprocess.Popen(
        [
            sys.executable,
            str(repo_root / "01_data" / "prepare.py"),
            "--out",
            str(run),
            "--overwrite",
            "--chars",
            "200000",
            "--seed",
            "9",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job inherits SIGINT ignored, and Python then installs no Ctrl-C handler:
        # the child gets the default a terminal gives, so that the signal below is a user's Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in p.stdout:  # wait until it is building (past the lock and the overwrite check)
        if line.startswith("[generate]"):
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip() == "interrupted" and "Traceback" not in err, err
    assert tree_hashes(run / "data") == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_learned_filter_separates_what_it_was_taught_and_scores_precision_recall():
    from learned_filter import ClassifierConfig, precision_recall, predict_proba, train_classifier

    good = [
        f"The {a} walked to the {b} with her friend and they talked about the weather."
        for a in ("girl", "boy", "cat", "dog")
        for b in ("park", "river", "shop")
    ]
    bad = [
        f"cheap {a} best {a} buy {a} online {b} sale {b} discount"
        for a in ("shoes", "loans", "pills", "watches")
        for b in ("now", "today", "free")
    ]
    model = train_classifier(
        good + bad, [0] * len(good) + [1] * len(bad), ClassifierConfig(buckets=1 << 14, steps=100)
    )
    probs = predict_proba(
        model, ["The fox walked to the park with his friend.", "buy cheap shoes online sale now discount"]
    )
    assert probs[0] < 0.5 < probs[1]
    r = precision_recall([0.9, 0.8, 0.2, 0.6], [1, 0, 1, 0])
    assert (
        (r["tp"], r["fp"], r["fn"]) == (1, 2, 1) and abs(r["precision"] - 1 / 3) < 1e-9 and r["recall"] == 0.5
    )


def test_toxicity_classifier_beats_the_lexicon_on_phrasings_it_never_saw():
    # trained on pool B (26 toxic beside 400 harmless: balanced in the loss), tested on pool A's
    # phrasings; unweighted and stopped at 300 steps, it flagged nothing there
    from learned_data import toxicity_sets
    from learned_filter import TOXICITY, precision_recall, predict_proba, train_classifier

    pools = toxicity_sets(seed=0)
    texts, labels = pools["A"]
    clf = precision_recall(predict_proba(train_classifier(*pools["B"], TOXICITY), texts), labels)
    lex = precision_recall([float(is_toxic(x)) for x in texts], labels)
    assert clf["recall"] >= lex["recall"] + 0.2 and clf["precision"] >= 0.9, (clf, lex)


def test_shard_signatures_read_from_disk_index_like_the_matrix(tmp_path):
    # the streamed run keeps signatures on disk; a band, a subset and a row gather must read exactly
    # what the in-memory matrix holds, and dedup over them must decide as dedup() does
    from dedup import signatures
    from doc_table import DocRecord
    from prepare_stream import ShardSignatures, dedup_by_fingerprints, exact_key

    base = "Bela Tora is a baker who lives in Mira and likes the color blue very much today. " * 3
    texts = [base, base.replace("blue", "green", 1), base, "Boats on the river at dawn. " * 5] * 3
    sig = signatures(texts)
    paths = []
    for i, (lo, hi) in enumerate([(0, 5), (5, 5), (5, 12)]):  # an empty shard in between
        paths.append(tmp_path / f"s{i}.npy")
        np.save(paths[-1], sig[lo:hi])
    lazy = ShardSignatures(paths, [5, 0, 7], sig.shape[1])
    assert len(lazy) == 12 and np.array_equal(lazy[:, 8:12], sig[:, 8:12])
    rows = np.array([11, 0, 6])
    assert np.array_equal(np.asarray(lazy[rows]), sig[rows]) and np.array_equal(
        lazy[rows][:, :4], sig[rows][:, :4]
    )
    keys = [exact_key(t) for t in texts]
    exact, near, keep = dedup_by_fingerprints(keys, lazy, 0.7)
    d = dedup(texts)
    assert exact.tolist() == d["exact_dup"].tolist() and near.tolist() == d["near_dup"].tolist()
    record = DocRecord("in0000001", "stories", 42)
    assert record["id"] == "in0000001" and "chars" in record and "text" not in record


def in_memory_documents(paths, cfg) -> list:
    """The reader prepare.py had before input was streamed: whole files, split by one regex."""
    from common.files import read_jsonl, read_text
    from input_documents import DOMAINS

    docs = []
    for p in map(pathlib.Path, paths):
        if p.suffix == ".jsonl":
            units = [
                (r.get("domain") if r.get("domain") in DOMAINS else cfg.input_domain, r["text"])
                for r in read_jsonl(p)
            ]
        else:
            text = read_text(p)
            blocks = {"line": text.split("\n"), "file": [text]}.get(cfg.txt_split) or re.split(
                r"\n[ \t\u3000]*\n", text
            )
            units = [(cfg.input_domain, b) for b in blocks]
        docs += [(d, t) for d, u in units for t in cut_document(u.strip(), cfg.max_doc_chars) if t.strip()]
    return [{"id": f"in{i:07d}", "domain": d, "lang": "", "text": t} for i, (d, t) in enumerate(docs)]


def test_streamed_reader_cuts_documents_like_the_in_memory_one(tmp_path):
    from input_documents import iter_documents

    long = " ".join(f"Sentence {i} is here." for i in range(200))
    txt = tmp_path / "a.txt"
    txt.write_text(f"One.\n\n\nTwo\nlines.\n \t\nThree.\n\u3000\n{long}\r\n\r\nFour.\n", encoding="utf-8")
    jl = tmp_path / "b.jsonl"
    jl.write_text('{"text": "x y z", "domain": "code"}\n\n{"text": "w"}\n', encoding="utf-8")
    for split in ("blank", "line", "file"):
        cfg = PrepareConfig(input=(str(txt), str(jl)), txt_split=split, max_doc_chars=500)
        streamed = list(iter_documents(cfg.input, cfg))
        assert streamed == in_memory_documents(cfg.input, cfg) == read_documents(cfg.input, cfg), split


# ---------------------------------------------------------------------------------------------------
# Hand-computed edges of the exercised functions (issue 26: each wrong answer in
# tests/exercise_mutants.py must fail one of these)


def test_luhn_by_hand_including_a_doubled_five():
    from pii import luhn_ok

    # 79927398713 from the right: 3 + 2·1 + 7 + (2·8 = 16 -> 7) + 9 + 2·3 + 7 + 2·2 + 9 + (2·9 = 18 -> 9) + 7
    # = 3 + 2 + 7 + 7 + 9 + 6 + 7 + 4 + 9 + 9 + 7 = 70 -> valid; change the check digit and it is not
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    # "59": 9 + (2·5 = 10 -> 1 + 0 = 1) = 10 -> valid (2·5 kept as 10 gives 19; 2·5 mod 10 gives 9)
    assert luhn_ok("59") and luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_jaccard_by_hand_and_on_empty_sets():
    # {1,2,3} ∩ {2,3,4} = {2,3}, ∪ = {1,2,3,4}: 2/4
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5 and jaccard({1}, {1}) == 1.0
    assert jaccard(set(), set()) == 0.0 and jaccard(set(), {1}) == 0.0  # no division by zero, and 0


def test_minhash_signatures_equal_a_naive_loop_over_the_hash_family():
    from dedup import minhash_params

    rng = np.random.default_rng(1)
    hash_lists = [rng.integers(0, 2**32, size=n, dtype=np.uint64) for n in (1, 5, 40, 3, 17)]
    a, b = minhash_params(20, 7)
    # h_i(x) = ((a_i·x + b_i) mod 2^64) >> 32 with Python integers, then the min over the document
    want = [
        [min(((int(a[i]) * int(x) + int(b[i])) % 2**64) >> 32 for x in h) for i in range(20)]
        for h in hash_lists
    ]
    for chunk in (16 * 8, 1 << 24):  # several document batches, then one
        sig = minhash_signatures(hash_lists, num_perm=20, seed=7, chunk_elems=chunk)
        assert sig.dtype == np.uint32 and sig.tolist() == want


def test_lsh_probability_pairs_and_roots_by_hand():
    from dedup import candidate_pairs, union_find_roots

    # s = 0.5, b = 3 bands of r = 2 rows: 1 - (1 - 0.5^2)^3 = 1 - 0.75^3 = 1 - 0.421875 = 0.578125
    assert candidate_probability(0.5, 3, 2) == pytest.approx(0.578125)
    assert candidate_probability(np.array([0.0, 1.0]), 3, 2).tolist() == [0.0, 1.0]
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 3, 4], [5, 5, 5, 5], [1, 2, 0, 0]], dtype=np.uint32)
    # band 0 (columns 0-1): docs 0, 1, 4 share (1, 2); band 1 (columns 2-3): docs 0, 2 share (3, 4)
    assert candidate_pairs(sig, 2, 2).tolist() == [[0, 1], [0, 2], [0, 4]]
    assert candidate_pairs(sig[[3, 1, 0]], 2, 2).tolist() == [[1, 2]]  # i < j whatever the order
    # components {0, 2}, {1, 3, 4} -> ids = smallest member
    assert union_find_roots(5, [(3, 4), (1, 4), (0, 2)]).tolist() == [0, 1, 0, 1, 1]
    # a chain 4-3-2-1: every node's id is 1, however long the chain of parents got
    assert union_find_roots(5, np.array([[3, 4], [2, 3], [1, 2]])).tolist() == [0, 1, 1, 1, 1]


def planted_signatures(n, copies, agree, seed=0, values=1 << 32):
    """(n, 128) random signatures where `copies` documents copy another's entries with probability
    `agree` each (a near-duplicate at Jaccard ~agree), some of them copies of copies."""
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, values, size=(n, 128), dtype=np.uint64).astype(np.uint32)
    for src, dst in zip(rng.integers(0, n, size=copies), rng.integers(0, n, size=copies)):
        same = rng.random(128) < agree
        sig[dst, same] = sig[src, same]
    return sig


def test_lean_lsh_gives_the_reference_pairs_and_clusters():
    # candidate_pairs_lean (the streamed run's LSH) must find exactly candidate_pairs' pairs, in the
    # same order, and so the same clusters: planted near-duplicates at several agreements, bands of
    # the dedup (32 x 4) and the split (18 x 7), few distinct values (big buckets), row chunks that
    # cut the documents unevenly
    from dedup import candidate_pairs, candidate_pairs_lean, component_roots, union_find_roots

    cases = [(0, 0, 0.9, 1 << 32), (1, 0, 0.9, 1 << 32), (300, 100, 0.8, 1 << 32), (2000, 800, 0.9, 1 << 32)]
    cases += [(2000, 300, 0.6, 1 << 32), (500, 0, 0.0, 3)]
    for seed, (n, copies, agree, values) in enumerate(cases):
        sig = planted_signatures(n, copies, agree, seed, values)
        for b, r in ((32, 4), (18, 7), (1, 128)):
            want = candidate_pairs(sig, b, r)
            got = candidate_pairs_lean(sig, b, r, chunk_rows=333)
            assert got.shape == want.shape and got.tolist() == want.tolist(), (n, copies, b, r)
            roots = union_find_roots(n, want).tolist()
            assert component_roots(n, got).tolist() == roots, (n, copies, b, r)
    assert len(candidate_pairs_lean(planted_signatures(2000, 800, 0.9), 32, 4)) > 500  # the copies are found


def test_bucketed_lsh_gives_the_lean_pairs_through_many_buckets(tmp_path):
    # the out-of-core LSH (lsh_buckets.py) groups each band through bucket files and merges the pairs
    # through partition files: with buckets of a few dozen rows (64-128 bucket files, 10-40 pair
    # partitions) it must give candidate_pairs_lean's pairs, same order and dtype, and leave no file
    from dedup import candidate_pairs_lean
    from lsh_buckets import bucket_bits, candidate_pairs_bucketed

    assert (bucket_bits(0, 8), bucket_bits(8, 8), bucket_bits(9, 8), bucket_bits(2000, 31)) == (0, 0, 1, 7)
    cases = [(0, 0, 0.9, 1 << 32), (1, 0, 0.9, 1 << 32), (2000, 800, 0.9, 1 << 32), (500, 0, 0.0, 3)]
    for seed, (n, copies, agree, values) in enumerate(cases):
        sig = planted_signatures(n, copies, agree, seed, values)
        for b, r in ((32, 4), (18, 7)):
            want = candidate_pairs_lean(sig, b, r)
            for bucket_rows in (31, 200, 1 << 20):
                got = candidate_pairs_bucketed(sig, b, r, tmp_path / "lsh", bucket_rows, chunk_rows=333)
                assert got.dtype == want.dtype and got.tolist() == want.tolist(), (n, b, r, bucket_rows)
                assert not list((tmp_path / "lsh").iterdir())
    assert len(want) > 500  # the last case's 3 values make big buckets: runs of many documents
    # exact dedup's mask through the same buckets: np.unique's first index per key kept
    from lsh_buckets import repeated_keys_bucketed

    keys = np.random.default_rng(0).integers(0, 300, size=2000).astype(np.uint64) * np.uint64(
        0x9E3779B97F4A7C15
    )
    _, first = np.unique(keys, return_index=True)
    for bucket_rows in (31, 1 << 20):
        repeated = repeated_keys_bucketed(keys, tmp_path / "exact", bucket_rows, chunk_rows=333)
        assert np.flatnonzero(~repeated).tolist() == sorted(first.tolist())
        assert not list((tmp_path / "exact").iterdir())


def test_lean_lsh_memory_stays_tens_of_bytes_per_document():
    # the LSH pass of a streamed run over millions of documents: candidate_pairs holds every band's
    # pairs (a close copy once per band it shares) and ~75 bytes of keys and indices per document,
    # ~400 bytes a document at the peak here; the lean version ~34 (keys 8, sort order 8, run starts
    # 4, the sort's buffer, and each pair once as an 8-byte code)
    import tracemalloc

    from dedup import candidate_pairs_lean

    n = 100_000
    sig = planted_signatures(n, n // 2, 0.9)
    tracemalloc.start()
    try:
        pairs = candidate_pairs_lean(sig, 32, 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pairs) > n // 4  # the planted copies are there to be found
    assert peak / n < 48, peak / n


def test_bucketed_lsh_memory_is_a_bucket_not_the_documents(tmp_path):
    # the out-of-core LSH sorts one bucket file at a time: with the same buckets (16,384 records)
    # and row chunks (4,096), 4x the documents must add little more than the pairs it returns
    # (8 bytes each, ~0.45 a document here), not candidate_pairs_lean's ~20+ bytes a document
    import tracemalloc

    from lsh_buckets import candidate_pairs_bucketed

    peaks = {}
    for n in (25_000, 100_000):
        sig = planted_signatures(n, n // 2, 0.9)
        tracemalloc.start()
        try:
            pairs = candidate_pairs_bucketed(sig, 32, 4, tmp_path / "lsh", 1 << 14, chunk_rows=1 << 12)
            _, peaks[n] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(pairs) > n // 4
    slope = (peaks[100_000] - peaks[25_000]) / 75_000
    assert slope < 10, (slope, peaks)


def test_langid_naive_bayes_by_hand():
    from langid_ngram import LangIDConfig, ngram_ids

    cfg = LangIDConfig(max_n=1, buckets=64, alpha=0.001)
    a, b = ngram_ids("ab", cfg).tolist()  # (1·1000003 + 97) mod 64 = 36, then 37
    model = train_langid(["ab"] * 3 + ["aaab", "d"], ["en"] * 3 + ["zh", "other"], cfg)
    log_prior, log_like = model
    assert np.exp(log_prior) == pytest.approx([3 / 5, 1 / 5, 1 / 5])  # documents per language
    # en: a 3, b 3 of 6 unigrams; zh: a 3, b 1 of 4: P(g | L) = (count + 0.001) / (total + 0.001·64)
    assert np.exp(log_like[0, [a, b, 0]]) == pytest.approx([3.001 / 6.064, 3.001 / 6.064, 0.001 / 6.064])
    assert np.exp(log_like[1, [a, b]]) == pytest.approx([3.001 / 4.064, 1.001 / 4.064])
    # "aa": en log .6 + 2 log .4949 = -1.917 beats zh log .2 + 2 log .7384 = -2.216 (without the
    # prior zh would win); "aaa": zh -2.519 beats en -2.621 (a mean over n-grams would pick en)
    assert predict_lang(model, "aa", cfg) == "en" and predict_lang(model, "aaa", cfg) == "zh"


def test_quality_effect_refuses_a_folder_without_stage_01_data(tmp_path):
    # the experiment pretrains 4 variants per seed (minutes); a wrong --data must fail before any of it
    from conftest import REPO

    r = subprocess.run(
        [sys.executable, str(REPO / "01_data" / "quality_effect.py"), "--data", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "no train.jsonl" in r.stderr and "Traceback" not in r.stderr, r.stderr
