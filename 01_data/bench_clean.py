"""Benchmark: our cleaning steps beside the libraries practitioners use, on the same inputs, with speed.

    python 01_data/bench_clean.py                  # all three tables, ~1 minute
    python 01_data/bench_clean.py --docs 200       # fewer generated documents

    HTML -> text   token F1 against hand-made gold text on the 12 pages in html_fixtures/ and against
                   the original text on pages noise_inject.py builds; ours vs trafilatura, resiliparse
    PII            recall per type on held-out formats and false masks per 10,000 tokens of number-rich
                   clean text (pii_eval.py); ours vs presidio-analyzer
    language ID    recall on injected French/Spanish/German/Portuguese/Dutch documents and clean
                   English/Chinese documents lost; ours vs py3langid

Each library is used when installed and skipped when not (requirements-bench.txt lists them).
Timings: contenders interleaved, the minimum of --repeats runs, with the load average printed.
Writes a plot to --plot (default runs/bench/bench_clean.png).

Interview question it answers: how do you know your hand-written filter is good enough? (run it
beside the standard tool on the same labelled inputs, and report quality and speed both)
"""

import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import option, parse_config, run_cli
from common.stats import sign_test_p, wilson_interval
from common.files import pyplot, save_figure
from clean import is_toxic
from pii import mask_pii_counts
from html_text import html_to_text, token_f1
from langid_ngram import predict_lang, train_langid, training_texts
from learned_data import quality_sets, toxicity_sets
from learned_filter import TOXICITY, precision_recall, predict_proba, train_classifier
from noise_inject import html_page, make_noisy
from pii_eval import pii_scores
from world import WorldConfig, build_world
from world_corpus import generate_corpus, story_slots

FIXTURES = Path(__file__).parent / "html_fixtures"


@dataclass
class BenchConfig:
    docs: int = option(300, "generated documents to turn into pages and foreign-language documents", min=10)
    repeats: int = option(3, "timing runs per contender (the minimum is reported)", min=1)
    plot: str = option("runs/bench/bench_clean.png", "where to save the plot")


def html_contenders():
    """{name: page -> text} for ours and each installed library."""
    out = {"ours (html_text.py)": html_to_text}
    try:
        import trafilatura

        out["trafilatura"] = lambda page: (
            trafilatura.extract(page, include_comments=True, favor_recall=True) or ""
        )
    except ImportError:
        pass
    try:
        from resiliparse.extract.html2text import extract_plain_text

        out["resiliparse"] = lambda page: extract_plain_text(page, main_content=True)
    except ImportError:
        pass
    return out


def pii_contenders():
    out = {"ours (pii.py)": mask_pii_counts}
    try:
        from presidio_analyzer import AnalyzerEngine

        engine = AnalyzerEngine()  # needs a spaCy model installed; fails here if none is

        def presidio(text):
            found = engine.analyze(text=text, language="en")
            return text, {r.entity_type: 1 for r in found}

        out["presidio-analyzer"] = presidio
    except (ImportError, OSError, ValueError) as e:  # not installed, or no spaCy model: skipped, said so
        print(f"presidio-analyzer skipped ({type(e).__name__})")
    return out


def langid_contenders(model):
    out = {"ours (langid_ngram.py)": lambda t: predict_lang(model, t)}
    try:
        import py3langid

        out["py3langid"] = lambda t: {"en": "en", "zh": "zh"}.get(py3langid.classify(t)[0], "other")
    except ImportError:
        pass
    return out


def timed(fn, items, repeats):
    """(outputs, seconds per item): the minimum over `repeats` runs."""
    best, outs = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        outs = [fn(x) for x in items]
        best = min(best, time.perf_counter() - t)
    return outs, best / max(1, len(items))


def interleaved(contenders, items, repeats):
    """{name: (outputs, seconds per item)}, contenders run in turn within each repeat."""
    results = {name: (None, float("inf")) for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            outs, sec = timed(fn, items, 1)
            results[name] = (outs, min(sec, results[name][1]))
    return results


def html_table(cfg, clean_docs, rng):
    pages = sorted(FIXTURES.glob("*.html"))
    fixture_inputs = [p.read_text(encoding="utf-8") for p in pages]
    gold = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in pages]
    injected = [(html_page(rng, d["text"]), d["text"]) for d in clean_docs]
    rows = {}
    contenders = html_contenders()
    res_fix = interleaved(contenders, fixture_inputs, cfg.repeats)
    res_inj = interleaved(contenders, [p for p, _ in injected], cfg.repeats)
    for name in contenders:
        f1_fix = [token_f1(o, g) for o, g in zip(res_fix[name][0], gold)]
        f1_inj = [token_f1(o, g) for o, (_, g) in zip(res_inj[name][0], injected)]
        rows[name] = {
            "fixtures_f1": statistics.mean(f1_fix),
            "fixtures_min": min(f1_fix),
            "per_page": dict(zip((p.stem for p in pages), f1_fix)),
            "injected_f1": statistics.mean(f1_inj),
            "ms_per_page": 1000 * res_inj[name][1],
        }
    return rows


def langid_table(cfg, clean_docs, rng, world):
    model = train_langid(*training_texts(1000))
    foreign = [make_noisy(rng, "wrong_lang", d, story_slots(rng, world)) for d in clean_docs]
    prose = [d["text"] for d in clean_docs]
    rows = {}
    contenders = langid_contenders(model)
    res_f = interleaved(contenders, foreign, cfg.repeats)
    res_c = interleaved(contenders, prose, cfg.repeats)
    for name in contenders:
        rows[name] = {
            "foreign_recall": sum(o == "other" for o in res_f[name][0]) / len(foreign),
            "clean_lost": sum(o == "other" for o in res_c[name][0]),
            "clean_docs": len(prose),
            "ms_per_doc": 1000 * res_c[name][1],
        }
    return rows


def toxicity_table():
    """Classifier (learned_filter.TOXICITY) beside the lexicon (clean.is_toxic), trained on one pool
    of phrasings and tested on the other, both ways: recall and precision with Wilson intervals, and
    a paired sign test over the toxic texts only one of the two catches."""
    pools = toxicity_sets(seed=0)
    print("\ntoxicity: train -> test   method      precision [95% CI]     recall [95% CI]      paired")
    for a, b in (("A", "B"), ("B", "A")):
        texts, labels = pools[b]
        y = np.asarray(labels, dtype=bool)
        flags = {
            "classifier": predict_proba(train_classifier(*pools[a], TOXICITY), texts) >= 0.5,
            "lexicon": np.array([is_toxic(x) for x in texts]),
        }
        only_clf, only_lex = (
            int((flags["classifier"] & ~flags["lexicon"] & y).sum()),
            int((flags["lexicon"] & ~flags["classifier"] & y).sum()),
        )
        for name, f in flags.items():
            r = precision_recall(f.astype(float), labels)
            p_lo, p_hi = wilson_interval(r["tp"], r["tp"] + r["fp"])
            r_lo, r_hi = wilson_interval(r["tp"], int(y.sum()))
            paired = (
                f"catches {only_clf} the lexicon misses, misses {only_lex} it catches: sign test p = "
                f"{sign_test_p(only_clf, only_lex):.2g}"
                if name == "classifier"
                else ""
            )
            print(
                f"  {a} -> {b} ({int(y.sum())} toxic, {r['negatives']} harmless)  {name:10s}  "
                f"{r['precision']:.3f} [{p_lo:.2f}, {p_hi:.2f}]   {r['recall']:.3f} [{r_lo:.2f}, {r_hi:.2f}]   {paired}"
            )


def main(argv=None):
    cfg, _ = parse_config(BenchConfig, argv, doc=__doc__)
    load = os.getloadavg()[0]
    world = build_world(WorldConfig(seed=5))
    docs = [
        d
        for d in generate_corpus(world, 5, cfg.docs * 400, {"dialog": 0.4, "knowledge": 0.3, "stories": 0.3})
        if d["domain"] != "code"
    ]
    random.Random(5).shuffle(docs)  # generate_corpus groups documents by domain
    docs = docs[: cfg.docs]
    rng = random.Random(5)
    html_rows = html_table(cfg, docs, rng)
    print(
        f"HTML -> text (token F1; {len(list(FIXTURES.glob('*.html')))} fixture pages, {len(docs)} injected pages)"
    )
    print(f"{'extractor':24s} {'fixtures F1':>11s} {'worst page':>10s} {'injected F1':>11s} {'ms/page':>8s}")
    for name, r in html_rows.items():
        print(
            f"{name:24s} {r['fixtures_f1']:11.3f} {r['fixtures_min']:10.3f} {r['injected_f1']:11.3f} {r['ms_per_page']:8.2f}"
        )
    print("\nper fixture page: " + ", ".join(html_rows))
    for page in next(iter(html_rows.values()))["per_page"]:
        print(f"  {page:16s} " + " ".join(f"{r['per_page'][page]:.3f}" for r in html_rows.values()))

    print("\nPII (held-out formats, pii_eval.py: 540 items; 3,000 clean number-rich sentences)")
    print(
        f"{'masker':24s} {'recall':>7s} {'worst type':>18s} {'false masks/10k tok':>20s} {'ms/sentence':>12s}"
    )
    pii_rows = {}
    for name, fn in pii_contenders().items():
        t = time.perf_counter()
        s = pii_scores(fn, seed=0, rounds=30, clean_sentences=3000)  # ~35,000 clean tokens
        sec = (time.perf_counter() - t) / (s["items"] + 3000)
        worst = min(s["per_type"], key=s["per_type"].get)
        pii_rows[name] = s
        tokens, false = s["clean_tokens"], s["false_masks"]
        print(
            f"{name:24s} {s['recall']:7.3f} {worst + ' ' + format(s['per_type'][worst], '.3f'):>18s}"
            f" {false * 1e4 / tokens:20.2f} {1000 * sec:12.2f}  ({false} in {tokens:,} tokens)"
        )

    lang_rows = langid_table(cfg, docs, rng, world)
    print(f"\nlanguage ID ({len(docs)} injected foreign documents, {len(docs)} clean en/zh documents)")
    print(f"{'identifier':24s} {'foreign recall':>14s} {'clean lost':>10s} {'ms/doc':>7s}")
    for name, r in lang_rows.items():
        print(f"{name:24s} {r['foreign_recall']:14.3f} {r['clean_lost']:10d} {r['ms_per_doc']:7.2f}")
    print("\nlearned filters (hashed n-grams + logistic regression, learned_filter.py), held-out sources")
    (train_x, train_y), (test_x, test_y) = quality_sets(seed=0)
    t = time.perf_counter()
    quality = train_classifier(train_x, train_y)
    train_s = time.perf_counter() - t
    probs = predict_proba(quality, test_x)
    print(
        f"quality: trained on {len(train_x)} texts (style-A junk) in {train_s:.1f}s; "
        f"tested on {len(test_x)} (other sources, style-B junk)"
    )
    for threshold in (0.5, 0.2):
        r = precision_recall(probs, test_y, threshold)
        print(
            f"  P(junk) >= {threshold}: precision {r['precision']:.3f}, recall {r['recall']:.3f} "
            f"({r['fp']} of {r['negatives']} good texts flagged)"
        )
    toxicity_table()
    print(
        f"\nload average at start {load:.2f}, at end {os.getloadavg()[0]:.2f}; timings are minima of {cfg.repeats} interleaved runs"
    )

    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.5))
    for a, rows, key, title in (
        (ax[0], html_rows, "fixtures_f1", "HTML fixtures: token F1"),
        (ax[1], pii_rows, "recall", "PII held-out recall"),
        (ax[2], lang_rows, "foreign_recall", "foreign-language recall"),
    ):
        a.barh(list(rows), [r[key] for r in rows.values()], color="C0")
        a.set_xlim(0, 1.05)
        a.set_title(title)
    save_figure(fig, Path(cfg.plot))
    print(f"wrote {cfg.plot}")


if __name__ == "__main__":
    run_cli(main)
