"""Cleaning: one small named function per step, run in order on every document.

Each step takes a text and returns `(text, acted)`: the new text (None = drop the document) and
whether the step changed or dropped it. `clean_document` runs them in pipeline order and records
which steps acted, so prepare.py can score every step against the injected noise labels.

    fix_encoding       repair mojibake (text that is UTF-8 bytes read as cp1252), drop text with U+FFFD
    normalize_unicode  NFKC, control characters out, whitespace runs collapsed (newlines kept)
    strip_markup       HTML tags and entities, URLs, ad lines
    strip_boilerplate  web navigation and copyright lines (not counted as noise: clean web pages have them)
    mask_pii           e-mails, phone numbers, ID numbers -> <EMAIL>, <PHONE>, <ID> (masked, not dropped)
    filter_toxic       drop documents with a word from the toxic lexicon
    filter_bias        drop documents with gender/region stereotype phrasing
    filter_length      drop documents under `min_tokens` tokens (a CJK character counts as a token)
    filter_language    drop documents whose language is not English or Chinese (char n-gram naive Bayes);
                       after the length filter because language ID is unreliable on a few words
    filter_quality     Gopher-style rules (Rae et al. 2021): mean word length, symbol ratio, repeated
                       lines, alphabetic words; code is checked by parsing it instead

Interview questions it answers:
- Why NFKC? (full-width "Ａ" and "A", ligatures "ﬁ" and "fi" become one form, so dedup and
  tokenization see one string; NFKC is lossy, so it is a choice, not a default for every corpus)
- Mask or drop PII? (masking keeps the useful text and the sentence structure; a placeholder token
  tells the model "an e-mail goes here" without leaking one)
- Why heuristic quality rules rather than a classifier? (cheap, transparent, no reference corpus
  needed; classifiers -- fastText on curated text, as in GPT-3 and FineWeb-Edu -- come next)
"""
import ast
import re
import unicodedata
from dataclasses import dataclass

from noise_inject import CP1252, TOXIC_WORDS

CP1252_BYTE = {ch: i for i, ch in enumerate(CP1252)}
MOJIBAKE_HINT = re.compile("[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192"
                           "\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
HTML_TAG = re.compile(r"</?[a-zA-Z][^<>\n]*>")
HTML_ENTITY = re.compile(r"&(?:[a-zA-Z]+|#\d+);")
URL = re.compile(r"\b(?:https?://|www\.)\S+")
AD_LINE = re.compile(r"(?i)^.*\b(click here|buy now|special offer|subscribe to our|sponsored:|\d+% off)\b.*$", re.M)
NAV_LINE = re.compile(r"^\s*(?:[A-Z][\w ]{1,15}\|\s*){2,}[A-Z][\w ]{1,15}\s*$", re.M)
COPYRIGHT_LINE = re.compile(r"(?i)^\s*(copyright|©|\(c\)).{0,80}all rights reserved\.?\s*$", re.M)
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
PHONE = re.compile(r"(?:\+\d{1,3}[ -])?\(?\b\d{3}\)?[ -]\d{3}[ -]\d{4}\b|(?<!\d)1[3-9]\d{9}(?!\d)")
ID_NUMBER = re.compile(r"(?<![\dA-Za-z])\d{17}[\dXx](?![\dA-Za-z])|\b\d{3}-\d{2}-\d{4}\b")
TOXIC = re.compile("|".join(rf"\b{re.escape(w)}\b" if w.isascii() else re.escape(w) for w in TOXIC_WORDS), re.I)
# A stereotype = a group word and a sweeping claim in one sentence; a keyword list, not a classifier.
BIAS = re.compile(r"(?i)\b(women|men|girls|boys|people from \w+|all people from)\b[^.!?\n]{0,30}\b("
                  r"are (?:bad|too|lazy|rude|dirty|dishonest)|can'?t|cannot)\b"
                  r"|(女人|男人|女生|男生)[^。！？\n]{0,8}(不适合|天生不会|都很)|\w{1,6}人都很(懒|笨|坏)")
TOKEN = re.compile(r"[\u3400-\u9fff]|\w+")


@dataclass
class CleanConfig:
    min_tokens: int = 20             # drop documents shorter than this (CJK characters count one each)
    mean_word_len: tuple = (3.0, 10.0)
    max_symbol_ratio: float = 0.1    # '#' and '...' per word (Gopher)
    max_dup_line_frac: float = 0.3   # fraction of lines that repeat an earlier line
    min_alpha_word_frac: float = 0.8  # words with at least one letter
    keep_langs: tuple = ("en", "zh")


def fix_encoding(text, max_replacement_frac=0.001):
    """Repair mojibake per line by re-encoding as cp1252 and decoding as UTF-8; handle U+FFFD.

    A line counts as mojibake only if it has a typical mojibake pair (e.g. 'Ã©', 'â€') AND the round
    trip succeeds: genuine 'é' or Chinese text cannot be re-encoded that way, so it is left alone.
    U+FFFD marks bytes lost before we got the text: more than 1 in 1000 characters and the text is
    too damaged (drop it); a stray one in a long real chapter is just removed.
    """
    n_bad = text.count("\ufffd")
    if n_bad > max_replacement_frac * len(text):
        return None, True
    if n_bad:
        return fix_encoding(text.replace("\ufffd", ""))[0], True
    lines, acted = text.split("\n"), False
    for i, line in enumerate(lines):
        if not MOJIBAKE_HINT.search(line):
            continue
        try:
            fixed = bytes(CP1252_BYTE[c] for c in line).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue
        lines[i], acted = fixed, True
    return "\n".join(lines), acted


def normalize_unicode(text, keep_indent=False):
    """NFKC, control and zero-width characters removed, runs of spaces/tabs collapsed, lines stripped.

    keep_indent: leave leading spaces alone (code: Python's indentation is syntax).
    """
    out = CONTROL.sub("", unicodedata.normalize("NFKC", text))
    lines = out.split("\n")
    if keep_indent:
        out = "\n".join(ln[:len(ln) - len(ln.lstrip())] + re.sub(r"[ \t]+", " ", ln.strip()) for ln in lines)
    else:
        out = "\n".join(re.sub(r"[ \t]+", " ", ln).strip() for ln in lines)
    out = re.sub(r"\n{3,}", "\n\n", out).strip()
    return out, out != text


def strip_markup(text):
    """Remove ad lines, HTML tags and entities, and URLs; tidy the blank lines left behind."""
    out = AD_LINE.sub("", text)
    out = HTML_TAG.sub("\n", out)
    out = HTML_ENTITY.sub(" ", out)
    out = URL.sub("", out)
    if out == text:
        return text, False
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n|\n(?=\S)", out)]
    return "\n\n".join(p for p in paras if p), True


def strip_boilerplate(text):
    out = COPYRIGHT_LINE.sub("", NAV_LINE.sub("", text))
    if out == text:
        return text, False
    return re.sub(r"\n{3,}", "\n\n", out).strip(), True


def mask_pii(text):
    out = EMAIL.sub("<EMAIL>", text)
    out = ID_NUMBER.sub("<ID>", out)
    out = PHONE.sub("<PHONE>", out)
    return out, out != text


def filter_toxic(text):
    return (None, True) if TOXIC.search(text) else (text, False)


def filter_bias(text):
    return (None, True) if BIAS.search(text) else (text, False)


def filter_language(text, lang, cfg: CleanConfig):
    return (None, True) if lang not in cfg.keep_langs else (text, False)


def filter_length(text, cfg: CleanConfig):
    return (None, True) if len(TOKEN.findall(text)) < cfg.min_tokens else (text, False)


def quality_problems(text, lang, domain, cfg: CleanConfig):
    """The Gopher-style rules this document fails (empty list = keep)."""
    if domain == "code":
        try:
            ast.parse(text)
            return []
        except SyntaxError:
            return ["code does not parse"]
    problems = []
    lines = [ln for ln in text.split("\n") if ln.strip()]
    dup_lines = len(lines) - len(dict.fromkeys(lines))
    if lines and dup_lines / len(lines) > cfg.max_dup_line_frac:
        problems.append("repeated lines")
    if lang == "en":
        words = text.split()
        mean_len = sum(map(len, words)) / max(1, len(words))
        if not cfg.mean_word_len[0] <= mean_len <= cfg.mean_word_len[1]:
            problems.append("mean word length")
        if (text.count("#") + text.count("...")) / max(1, len(words)) > cfg.max_symbol_ratio:
            problems.append("symbol ratio")
        if sum(any(c.isalpha() for c in w) for w in words) / max(1, len(words)) < cfg.min_alpha_word_frac:
            problems.append("few alphabetic words")
    return problems


def filter_quality(text, lang, domain, cfg: CleanConfig):
    return (None, True) if quality_problems(text, lang, domain, cfg) else (text, False)


STEPS = ["fix_encoding", "normalize_unicode", "strip_markup", "strip_boilerplate", "mask_pii",
         "filter_toxic", "filter_bias", "filter_length", "filter_language", "filter_quality"]


TEXT_STEPS = {"fix_encoding": fix_encoding, "strip_markup": strip_markup, "strip_boilerplate": strip_boilerplate,
              "mask_pii": mask_pii, "filter_toxic": filter_toxic, "filter_bias": filter_bias}  # text -> (text, acted)


def clean_document(doc, predict_lang, cfg: CleanConfig = CleanConfig()):
    """(cleaned doc or None, [steps that acted], step that dropped it or None).

    The document's language is re-identified after markup is stripped (the generator's tag is not trusted).
    """
    text, acted = doc["text"], []
    lang = doc.get("lang")
    for step in STEPS:
        if step == "filter_language":
            lang = predict_lang(text)
            new, did = filter_language(text, lang, cfg) if doc["domain"] != "code" else (text, False)
        elif step == "filter_length":
            new, did = filter_length(text, cfg)
        elif step == "filter_quality":
            new, did = filter_quality(text, lang, doc["domain"], cfg)
        elif step == "normalize_unicode":
            new, did = normalize_unicode(text, keep_indent=doc["domain"] == "code")
        else:
            new, did = TEXT_STEPS[step](text)
        if did:
            acted.append(step)
        if new is None:
            return None, acted, step
        text = new
    return {**doc, "lang": lang, "text": text}, acted, None
