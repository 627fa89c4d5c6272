"""False positives: how often each cleaning step changes or drops text that is already clean.

Precision and recall on injected noise (prepare.py's table) say how well a filter finds the dirt we
put in. They do not say what it costs on the text we want to keep: a toxicity word list that drops
every children's story with "stupid" in it, or a length filter that drops every short speech of a
play, can score 1.000 on injected noise. So we also run the pipeline on real text that is known to
be clean and count, per step, the share of documents (and of characters) it changed or dropped.

    python 01_data/prepare.py --out runs/x --fp-check ../shared/data/text/tinystories_valid_head.txt \\
        ../shared/data/text/tinyshakespeare.txt ../shared/data/text/hongloumeng.txt

(The files are read like `--input` files: blank-line blocks, overlong ones cut at --max-doc-chars.)
Every step a document reaches is measured in pipeline order, as in a real run: a document dropped
by the length filter is not seen by the language filter. A changing step on clean text is not
always wrong -- a mojibake fixer on a corpus that has real mojibake in it, as TinyStories does, is
doing its job -- so the table separates "changed" from "dropped" and the reader judges.

Interview questions it answers:
- How do you measure a filter's false-positive rate without labels? (run it on text you trust to be
  clean -- books, curated sets -- and read what it removed)
- Why report characters as well as documents? (one dropped novel is one document and 40 % of the text)
"""

from clean import STEPS, CleanConfig, clean_document


def filter_rates(docs, predict_lang, cfg: CleanConfig = CleanConfig()) -> dict:
    """Per step: documents changed and dropped, characters removed, and their shares, over `docs`.

    docs: [{"id", "domain", "text"}] of clean text; predict_lang(text) -> "en" | "zh" | "other"."""
    rows = {s: {"docs_changed": 0, "docs_dropped": 0, "chars_removed": 0} for s in STEPS}
    for doc in docs:
        _, acted, dropped_by = clean_document({**doc, "lang": ""}, predict_lang, cfg)
        for step, chars in acted.items():
            rows[step]["docs_dropped" if step == dropped_by else "docs_changed"] += 1
            rows[step]["chars_removed"] += chars
    n_docs, n_chars = max(1, len(docs)), max(1, sum(len(d["text"]) for d in docs))
    for r in rows.values():
        r["doc_share"] = (r["docs_changed"] + r["docs_dropped"]) / n_docs
        r["char_share"] = r["chars_removed"] / n_chars
    return {"docs": len(docs), "chars": sum(len(d["text"]) for d in docs), "steps": rows}


def format_rates(name: str, result: dict) -> str:
    """Table lines for one file: only the steps that acted, with shares of documents and characters."""
    lines = [f"{name}: {result['docs']:,} documents, {result['chars']:,} characters"]
    acted = {s: r for s, r in result["steps"].items() if r["docs_changed"] or r["docs_dropped"]}
    if not acted:
        return lines[0] + "\n  no step changed or dropped anything"
    lines.append(
        f"  {'step':18s} {'changed':>8s} {'dropped':>8s} {'docs':>7s} {'chars removed':>14s} {'chars':>7s}"
    )
    for s, r in acted.items():
        lines.append(
            f"  {s:18s} {r['docs_changed']:8,d} {r['docs_dropped']:8,d} {r['doc_share']:7.1%} "
            f"{r['chars_removed']:14,d} {r['char_share']:7.1%}"
        )
    return "\n".join(lines)
