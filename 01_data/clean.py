"""Cleaning: one small named function per step, run in order on every document.

Each step takes a text and returns `(text, acted)`: the new text (None = drop the document) and
whether the step changed or dropped it. `clean_document` runs them in pipeline order and records
what each step did (characters removed), so prepare.py can score every step against the injected
noise labels and count what it cost in real text.

    fix_encoding       repair mojibake (UTF-8 bytes read as cp1252 or latin-1), drop text with U+FFFD
    normalize_unicode  NFKC (but CJK full-width punctuation kept), control characters out, whitespace runs
                       collapsed (newlines kept)
    strip_markup       an HTML page -> its readable text (html_text.py), then URLs and ad lines
    strip_boilerplate  web navigation and copyright lines (not counted as noise: clean web pages have them)
    mask_pii           e-mails, phones, IPv4/IPv6, cards (Luhn), Chinese IDs (check digit), SSNs, passports
                       -> |||EMAIL_ADDRESS|||, |||PHONE_NUMBER|||, ... (masked, not dropped; pii.py)
    filter_toxic       drop documents with profanity or an insult aimed at someone
    filter_bias        drop documents that claim a whole group (gender, origin, age) is bad at or is something
    filter_length      drop documents under `min_tokens` tokens (a CJK character counts as a token)
    filter_language    drop documents whose language is not English or Chinese (char n-gram naive Bayes);
                       after the length filter because language ID is unreliable on a few words
    filter_quality     Gopher's document rules (Rae et al. 2021; quality_rules.py): word count, mean
                       word length, symbol ratio, bullet and ellipsis lines, alphabetic words, repeated
                       lines and paragraphs; code is checked by parsing it instead

The filters know nothing about noise_inject.py (they import nothing from it): their lexicons and
patterns are written from what such text looks like in general, and the injector draws from its own
phrasings, which overlap only partly, so the scores measure what a filter would catch on text it
was not written for. Word lists are the classic baseline (C4 dropped every page with a word from a
list of ~400, and with them much harmless text); a classifier trained on labelled comments is what
production pipelines use.

Interview questions it answers:
- Why NFKC? (full-width "Ａ" and "A", ligatures "ﬁ" and "fi" become one form, so dedup and
  tokenization see one string; NFKC is lossy -- it would also turn Chinese "，" into "," -- so it
  is a choice with exceptions, not a default for every corpus)
- How do you tell mojibake from real accented text? (re-encode a run of suspicious characters as
  cp1252 bytes: mojibake decodes as valid UTF-8 into a plausible character; real "é" or "’" does not)
- Why does a word list over-filter? (words are not intent: "stupid" in a children's story, "men
  cannot" in Shakespeare; aim the rule at a target -- "you idiot" -- and measure it on clean text)
- Why heuristic quality rules rather than a classifier? (cheap, transparent, no reference corpus
  needed; a classifier -- fastText on curated text, as in GPT-3 and FineWeb-Edu -- is learned_filter.py)
"""

import ast
import html
import re
import unicodedata
from dataclasses import dataclass

from html_text import html_to_text, looks_like_html
from pii import mask_pii
from quality_rules import PIPELINE_RULES, gopher_problems

# ---------------------------------------------------------------------------------------------------
# Encoding. UTF-8 writes every non-ASCII character as 2-4 bytes in 0x80-0xFF; read as cp1252 (or
# latin-1, whose 0x80-0x9F are the C1 control characters) each byte becomes one character. This maps
# those characters back to their bytes.
MOJIBAKE_BYTE = {
    c: b
    for b in range(0x80, 0x100)  # chr(b) is latin-1's reading
    for c in (bytes([b]).decode("cp1252", errors="ignore"), chr(b))
    if c
}
MOJIBAKE_RUN = re.compile("[" + "".join(map(re.escape, MOJIBAKE_BYTE)) + "]{2,}")
# A 2-byte decode is believable only into Latin, Greek or Cyrillic (U+0080-U+052F; the C1 controls
# at its start are what text mangled twice passes through): German "daß“" is the bytes DF 93, which
# decode to an N'Ko letter -- a coincidence, not mojibake. Three or four bytes that happen to form
# valid UTF-8 by chance are rare enough to trust any assigned character.
TWO_BYTE_PLAUSIBLE = (0x0080, 0x052F)
# cp1252 has no character for 0x81, 0x8D, 0x8F, 0x90, 0x9D, so a decoder with errors="ignore" loses
# them; "”" is E2 80 9D, which is why real corpora (TinyStories among them) end quotes with a bare "â€".
LOST_BYTE_GUESS = {b"\xe2\x80": "\u201d"}

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
# Full-width punctuation is how Chinese and Japanese are written, not a compatibility variant: NFKC
# would turn "你好，世界！" into "你好,世界!". Letters and digits (Ａ, １) are still folded.
WIDE_PUNCT = re.compile("([\u3000\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]+)")

# ---------------------------------------------------------------------------------------------------
# Markup and boilerplate.
HTML_ENTITY = re.compile(r"&(?:[a-zA-Z]{2,8}|#\d{2,6}|#x[0-9a-fA-F]{2,6});")
URL = re.compile(r"\b(?:https?://|www\.)\S+")
AD_PHRASES = [
    "click here",
    "buy now",
    "special offer",
    "limited time",
    "subscribe to",
    "sign up now",
    "sponsored",
    "advertisement",
    "free shipping",
    "% off",
    "order now",
    "act now",
]
AD_WORDS = re.compile(r"(?i)\b(?:" + "|".join(map(re.escape, AD_PHRASES)) + r")\b")
NAV_LINE = re.compile(r"^\s*(?:[A-Z][\w ]{1,15}\|\s*){2,}[A-Z][\w ]{1,15}\s*$", re.M)
COPYRIGHT_LINE = re.compile(r"(?i)^\s*(copyright|©|\(c\)).{0,80}all rights reserved\.?\s*$", re.M)

# ---------------------------------------------------------------------------------------------------
# Toxicity: profanity that is abusive almost anywhere, and insults aimed at a person. Mild words
# ("stupid", "fool", "dumb") alone are not toxic: children's stories and Shakespeare are full of them.
PROFANITY_EN = {
    "fuck",
    "fucked",
    "fucking",
    "fucker",
    "motherfucker",
    "shit",
    "bullshit",
    "asshole",
    "bitch",
    "cunt",
    "dickhead",
    "dumbass",
    "jackass",
    "scumbag",
    "douchebag",
    "retard",
    "moron",
    "imbecile",
}
PROFANITY_ZH = ["傻逼", "他妈的", "操你", "王八蛋", "狗娘养", "贱人", "混蛋", "废柴"]
INSULT_NOUNS = [
    "idiot",
    "moron",
    "imbecile",
    "cretin",
    "loser",
    "jerk",
    "dumbass",
    "scumbag",
    "retard",
    "pig",
    "clown",
    "trash",
    "garbage",
]
INSULT_ADJ = ["stupid", "dumb", "worthless", "pathetic", "useless", "disgusting", "brainless", "ugly"]
INSULT_ZH = ["笨蛋", "蠢货", "傻瓜", "白痴", "废物", "蠢猪", "猪头"]
INSULT_WORDS = set(INSULT_NOUNS) | {w + "s" for w in INSULT_NOUNS} | set(INSULT_ADJ)
_NOUN, _ADJ = f"(?:{'|'.join(INSULT_NOUNS)})s?", f"(?:{'|'.join(INSULT_ADJ)})"
AIMED_EN = re.compile(  # "you idiot", "you're a total loser", "you are so stupid", "Bela is a complete idiot"
    rf"(?i)\byou(?:'re| are| r)?\s+(?:(?:a|an|such|so|total|complete|absolute|little|{_ADJ})\s+){{0,3}}{_NOUN}\b"
    rf"|\byou(?:'re| are)\s+(?:so\s+|such\s+an?\s+)?{_ADJ}\b"
    rf"|\b(?:is|are|what)\s+(?:a|an)\s+(?:(?:total|complete|absolute|real|{_ADJ})\s+){{0,2}}{_NOUN}\b"
    rf"|\bshut up\b[^.!?\n]{{0,20}}\b{_NOUN}\b"
)
AIMED_ZH = re.compile(
    rf"你(?:这个|这|个|真是个|就是个|是个)?[^。！？\n]{{0,2}}?(?:{'|'.join(INSULT_ZH)})"
    r"|(?:笨蛋|蠢货|白痴|废物)[！!]"
)
WORD = re.compile(r"[a-z]+")

# ---------------------------------------------------------------------------------------------------
# Bias: a sweeping claim about a whole group. A keyword rule, not a classifier: it needs a group as
# the subject and a generalizing claim about it.
GROUP_EN = (
    r"women|men|girls|boys|females|males|old people|the elderly|immigrants|foreigners|"
    r"(?:people|folks|anyone|everyone) from (?:the )?\w+|"
    r"(?-i:(?!(?:Some|Many|Most|These|Those|The|Other|All|Few|Such|Good|Nice|Young|Old)\b)[A-Z]\w+) people"
)
CLAIM_EN = (
    r"are (?:all |just |always |naturally |simply )?(?:lazy|stupid|dumb|dirty|dishonest|rude|inferior|"
    r"useless|greedy|weak|criminals|thieves|liars|bad at|terrible at|not good at|worse at|too emotional)"
    r"|(?:can't|cannot|can never|shouldn't|should not|should never) (?:be trusted|lead|drive|do math|"
    r"handle|be (?:leaders|engineers|doctors|pilots|bosses))"
    r"|belong in the kitchen|are naturally (?:better|worse)"
)
# "<place>人" needs two characters before 人, so 众人 / 别人 ("everyone", "others") are not groups.
GROUP_ZH = (
    r"女人|男人|女生|男生|女性|男性|女孩子?|男孩子?|老人|外地人|农村人|乡下人|外国人|[\u4e00-\u9fff]{2,5}人"
)
CLAIM_ZH = (
    r"(?:都很|都是|全是|全都|天生就?|根本就?|生来就?|一般都)[^。！？\n]{0,4}?"
    r"(?:不适合|不会|学不好|做不好|懒|笨|蠢|脏|坏|素质低|不诚实|靠不住|骗子|小偷)"
)
BIAS_EN = re.compile(rf"(?i)\b(?:{GROUP_EN})\b[^.!?\n]{{0,25}}?\b(?:{CLAIM_EN})\b")
BIAS_ZH = re.compile(rf"(?:{GROUP_ZH}){CLAIM_ZH}|(?:女人|女性|女生)不适合")
GROUP_HEADS = {
    "women",
    "men",
    "girls",
    "boys",
    "females",
    "males",
    "people",
    "elderly",
    "immigrants",
    "foreigners",
    "folks",
    "anyone",
    "everyone",
}

TOKEN = re.compile(r"[\u3400-\u9fff]|\w+")


@dataclass
class CleanConfig:
    min_tokens: int = 20  # drop documents shorter than this (CJK characters count one each)
    max_words: int = 100_000  # Gopher's upper bound; the other thresholds are the paper's (quality_rules.py)
    keep_langs: tuple = ("en", "zh")


def plausible(ch: str) -> bool:
    if len(ch.encode("utf-8")) == 2:
        return TWO_BYTE_PLAUSIBLE[0] <= ord(ch) <= TWO_BYTE_PLAUSIBLE[1]
    return unicodedata.category(ch) not in ("Cc", "Cf", "Co", "Cs", "Cn")


def decode_run(run: str) -> str:
    """A run of mojibake-able characters with every valid, plausible UTF-8 sequence in it decoded.

    Bytes that do not decode stay the characters they were, so a run mixing real "é" with mojibake
    repairs only the mojibake."""
    data = bytes(MOJIBAKE_BYTE[c] for c in run)
    out, i = [], 0
    while i < len(data):
        n = (
            2
            if 0xC2 <= data[i] <= 0xDF
            else 3
            if 0xE0 <= data[i] <= 0xEF
            else 4
            if 0xF0 <= data[i] <= 0xF4
            else 0
        )
        try:
            ch = data[i : i + n].decode("utf-8") if n and i + n <= len(data) else None
        except UnicodeDecodeError:
            ch = None
        if ch is not None and plausible(ch):
            out.append(ch)
            i += n
        elif data[i : i + 2] in LOST_BYTE_GUESS and (i + 2 == len(data) or not 0x80 <= data[i + 2] <= 0xBF):
            out.append(LOST_BYTE_GUESS[data[i : i + 2]])
            i += 2
        else:
            out.append(run[i])
            i += 1
    return "".join(out)


def fix_encoding(text, max_replacement_frac=0.001):
    """Repair mojibake run by run; handle U+FFFD.

    A run of two or more characters that UTF-8 bytes turn into under cp1252/latin-1 (e.g. 'Ã©',
    'â€™', 'ä½ å¥½') is re-encoded to bytes and decoded as UTF-8; only sequences that decode into a
    plausible character are replaced. Repeated (at most 3 times) for text that went through the
    mistake twice ('Ã¢â‚¬â„¢' -> 'â€™' -> '’'). Genuine 'é', '’' or Chinese never form such a
    sequence, so clean text is left alone.
    U+FFFD marks bytes lost before we got the text: more than 1 in 1000 characters and the text is
    too damaged (drop it); a stray one in a long real chapter is just removed.
    """
    n_bad = text.count("\ufffd")
    if n_bad > max_replacement_frac * len(text):
        return None, True
    out = text.replace("\ufffd", "")
    for _ in range(3):
        fixed = MOJIBAKE_RUN.sub(lambda m: decode_run(m.group(0)), out)
        if fixed == out:
            break
        out = fixed
    return out, out != text


def normalize_unicode(text, keep_indent=False):
    """NFKC (full-width punctuation kept), control and zero-width characters removed, runs of
    spaces/tabs collapsed, lines stripped.

    keep_indent: leave leading spaces alone (code: Python's indentation is syntax).
    """
    parts = WIDE_PUNCT.split(text)  # odd indices: the punctuation to keep
    out = CONTROL.sub(
        "", "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))
    )
    lines = out.split("\n")
    if keep_indent:
        out = "\n".join(ln[: len(ln) - len(ln.lstrip())] + re.sub(r"[ \t]+", " ", ln.strip()) for ln in lines)
    else:
        out = "\n".join(re.sub(r"[ \t]+", " ", ln).strip() for ln in lines)
    out = re.sub(r"\n{3,}", "\n\n", out).strip()
    return out, out != text


def strip_markup(text):
    """An HTML page or fragment becomes its readable text (html_text.py: block vs inline elements,
    lists, entities, menus and footers dropped by link density); then ad lines and URLs go, and in
    plain text stray entities are decoded."""
    out = html_to_text(text) if looks_like_html(text) else text
    low = out.lower()
    if any(p in low for p in AD_PHRASES):  # a substring test first: the regex is slow to try everywhere
        out = "\n".join("" if AD_WORDS.search(line) else line for line in out.split("\n"))
    out = URL.sub("", out)
    out = HTML_ENTITY.sub(lambda m: html.unescape(m.group(0)), out).replace("\xa0", " ")
    if out == text:
        return text, False
    return re.sub(r"\n\s*\n\s*", "\n\n", out).strip(), True


def strip_boilerplate(text):
    out = COPYRIGHT_LINE.sub("", NAV_LINE.sub("", text))
    if out == text:
        return text, False
    return re.sub(r"\n{3,}", "\n\n", out).strip(), True


def is_toxic(text) -> bool:
    """Profanity anywhere, or an insult aimed at someone. A set lookup per word first: the slower
    aimed-insult patterns run only on the few documents that hold an insult word at all."""
    words = set(WORD.findall(text.lower()))
    if words & PROFANITY_EN or any(w in text for w in PROFANITY_ZH):
        return True
    return bool(
        words & INSULT_WORDS
        and AIMED_EN.search(text)
        or any(w in text for w in INSULT_ZH)
        and AIMED_ZH.search(text)
    )


def is_biased(text) -> bool:
    """A group as the subject of a sweeping claim (each regex runs only when a group word is there)."""
    en = set(WORD.findall(text.lower())) & GROUP_HEADS and BIAS_EN.search(text)
    zh = ("人" in text or "女" in text or "男" in text) and BIAS_ZH.search(text)
    return bool(en or zh)


def filter_toxic(text):
    return (None, True) if is_toxic(text) else (text, False)


def filter_bias(text):
    return (None, True) if is_biased(text) else (text, False)


def filter_language(text, lang, cfg: CleanConfig):
    return (None, True) if lang not in cfg.keep_langs else (text, False)


def filter_length(text, cfg: CleanConfig):
    return (None, True) if len(TOKEN.findall(text)) < cfg.min_tokens else (text, False)


def quality_problems(text, lang, domain, cfg: CleanConfig):
    """The quality rules this document fails (empty list = keep): Gopher's document rules
    (quality_rules.py, the PIPELINE_RULES subset) for prose, parsing for code."""
    if domain == "code":
        try:
            ast.parse(text)
            return []
        except SyntaxError:
            return ["code does not parse"]
    return gopher_problems(text, lang, min_words=0, max_words=cfg.max_words, rules=PIPELINE_RULES)


def filter_quality(text, lang, domain, cfg: CleanConfig):
    return (None, True) if quality_problems(text, lang, domain, cfg) else (text, False)


STEPS = [
    "fix_encoding",
    "normalize_unicode",
    "strip_markup",
    "strip_boilerplate",
    "mask_pii",
    "filter_toxic",
    "filter_bias",
    "filter_length",
    "filter_language",
    "filter_quality",
]


TEXT_STEPS = {
    "fix_encoding": fix_encoding,
    "strip_markup": strip_markup,
    "strip_boilerplate": strip_boilerplate,
    "mask_pii": mask_pii,
    "filter_toxic": filter_toxic,
    "filter_bias": filter_bias,
}  # text -> (text, acted)


def clean_document(doc, predict_lang, cfg: CleanConfig = CleanConfig()):
    """(cleaned doc or None, {step that acted: characters it removed}, step that dropped it or None).

    A dropping step removes all the characters the document still had; a changing step removes the
    difference in length (negative when it grew, e.g. '&amp;' -> '&' shrinks, a mask may grow).
    The document's language is re-identified after markup is stripped (the generator's tag is not trusted).
    """
    text, acted = doc["text"], {}
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
            acted[step] = len(text) - (0 if new is None else len(new))
        if new is None:
            return None, acted, step
        text = new
    return {**doc, "lang": lang, "text": text}, acted, None
