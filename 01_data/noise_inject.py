"""Labelled noise injection: turn clean generated documents into the dirt that real web text has.

Real corpora are full of duplicates, broken encodings, markup, personal data, toxic and biased text,
fragments and other languages. We inject each kind on purpose, into copies of clean documents, and
keep a label per injected document (the "sidecar" `noise_labels.jsonl`), so every cleaning step can
be scored: of the documents it caught, how many were really that noise (precision), and of the
injected ones, how many it caught (recall).

Noise types (one per injected document):
    exact_dup   a copy of a clean document (with spacing/case changes only)
    near_dup    a copy with a few small word edits (deletions, swaps, insertions)
    mojibake    UTF-8 bytes decoded as cp1252 ("caf\u00c3\u00a9"), or bytes damaged into U+FFFD
    html        the text wrapped in HTML tags plus ad lines with URLs
    pii         e-mail addresses, phone numbers, ID numbers inserted in sentences
    toxic       insults from a small lexicon
    bias        gender/region stereotype sentences from a keyword list
    too_short   a fragment of a few words
    wrong_lang  a French, Spanish or German document (the corpus is English and Chinese)

Duplicates are appended after the clean documents: dedup keeps the first occurrence, so the copy is
what gets removed. Other noisy documents are built from fresh clean documents and appended likewise.

Interview question it answers: how do you know a cleaning pipeline works? (inject labelled noise,
measure precision and recall per filter; look at the false positives)
"""
import random

NOISE_TYPES = ["exact_dup", "near_dup", "mojibake", "html", "pii", "toxic", "bias", "too_short", "wrong_lang"]

TOXIC_WORDS = ["idiot", "stupid", "moron", "loser", "dumbass", "scumbag", "傻瓜", "笨蛋", "废物", "蠢货"]
BIAS_SENTENCES = [
    "Women are bad at math, so {first} should not be an engineer.",
    "Everyone knows men can't take care of children.",
    "People from {country} are lazy and dishonest.",
    "Girls are too emotional to be leaders.",
    "All people from the countryside are rude and dirty.",
    "女人不适合当工程师。", "{country}人都很懒。", "男人天生不会照顾孩子。",
]
AD_LINES = ["Click here to buy now! Best deals at {url}", "SPECIAL OFFER: 50% off today only, visit {url}",
            "Subscribe to our newsletter: {url}", "Sponsored: win a free phone at {url}"]
FOREIGN = {
    "fr": ["{name} est un habitant de {city}, une ville au bord de la rivière {river}.",
           "Chaque matin, il boit un café et mange du pain avec de la confiture.",
           "Son animal préféré est un chat qui dort toute la journée près de la fenêtre.",
           "Les gens de {city} aiment beaucoup les marchés du dimanche et les fêtes d'été.",
           "Il travaille dans une boulangerie depuis plusieurs années avec ses amis.",
           "Le soir, la famille se réunit pour parler de la journée et écouter de la musique."],
    "es": ["{name} vive en {city}, una ciudad junto al río {river}.",
           "Todas las mañanas camina por la plaza y saluda a sus vecinos.",
           "Le gusta mucho cocinar sopa de verduras para toda la familia.",
           "En {city} hay un mercado grande donde venden frutas, pan y queso.",
           "Los niños juegan en el parque hasta que se pone el sol.",
           "Por la noche, escuchan la radio y hablan de sus planes para mañana."],
    "de": ["{name} wohnt in {city}, einer kleinen Stadt am Fluss {river}.",
           "Jeden Morgen trinkt er einen Kaffee und liest die Zeitung.",
           "Seine Katze schläft den ganzen Tag auf dem Sofa neben dem Fenster.",
           "In {city} gibt es einen schönen Markt mit frischem Brot und Käse.",
           "Am Wochenende fahren die Freunde mit dem Fahrrad durch den Wald.",
           "Abends sitzt die Familie zusammen und spricht über den Tag."],
}

# cp1252 as Python knows it, with the five undefined bytes mapped like latin-1 (what browsers do).
CP1252 = [bytes([i]).decode("cp1252", errors="ignore") or chr(i) for i in range(256)]


def to_mojibake(text: str) -> str:
    """UTF-8 bytes read back as cp1252: 'é' -> 'Ã©', '’' -> 'â€™', '你' -> 'ä½\u00a0'."""
    return "".join(CP1252[b] for b in text.encode("utf-8"))


def with_typography(rng, text: str) -> str:
    """Give ASCII text some curly quotes and dashes, so its mojibake shows (ASCII survives cp1252)."""
    text = text.replace("'", "\u2019").replace(". ", ". \u2014 ", 2)
    return f"\u201c{text}\u201d" if rng.random() < 0.5 else text


def broken_bytes(rng, text: str) -> str:
    """Damage some multi-byte sequences, decode with replacement: U+FFFD where bytes were lost."""
    data = bytearray(text.encode("utf-8"))
    for _ in range(max(3, len(data) // 200)):
        i = rng.randrange(len(data))
        data[i] = 0xFF if rng.random() < 0.5 else 0x80
    return data.decode("utf-8", errors="replace")


def near_copy(rng, text: str) -> str:
    """A few small edits in the middle half of the text: one per 60 words (60 characters in Chinese), at least one."""
    zh = len(text.split(" ")) < len(text) / 20  # few spaces: edit characters instead of words
    words = list(text) if zh else text.split(" ")
    for _ in range(max(1, len(words) // 60)):
        i = rng.randrange(len(words) // 4, max(len(words) // 4 + 1, 3 * len(words) // 4))  # the middle: content, not nav/footer
        op = rng.randrange(3)
        if op == 0 and len(words) > 3:
            del words[i]
        elif op == 1:
            words.insert(i, rng.choice(["也", "还", "很"] if zh else ["really", "also", "very", "just", "then"]))
        elif i + 1 < len(words) and words[i] != words[i + 1]:
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            words.insert(i, "也" if zh else "so")
    return ("" if zh else " ").join(words)


def fake_pii(rng, who):
    """A sentence about `who` holding one made-up e-mail, phone number or ID number."""
    kind = rng.randrange(4)
    if kind == 0:
        user = "".join(rng.choice("abcdefghijklmnop") for _ in range(6))
        email = f"{user}.{rng.randrange(10, 99)}@{rng.choice(['mail.com', 'example.org', 'qq.com'])}"
        return rng.choice([f"You can write to {who} at {email}.", f"联系邮箱：{email}"])
    if kind == 1:
        return f"Call {who} on +1 {rng.randrange(200, 999)}-{rng.randrange(200, 999)}-{rng.randrange(1000, 9999)} any time."
    if kind == 2:
        return f"{who}的手机号是1{rng.choice('3589')}{rng.randrange(10**8, 10**9)}。"  # Chinese mobile number
    id_number = (f"{rng.randrange(110000, 659999)}{rng.randrange(1950, 2005)}{rng.randrange(1, 13):02d}"
                 f"{rng.randrange(1, 29):02d}{rng.randrange(100, 999)}{rng.choice('0123456789X')}")  # 18-char ID
    return rng.choice([f"{who}'s ID number is {id_number}.", f"身份证号：{id_number}"])


def insert_sentence(rng, text: str, sentence: str) -> str:
    lines = text.split("\n")
    i = rng.randrange(len(lines) + 1)
    return "\n".join(lines[:i] + [sentence] + lines[i:])


def make_noisy(rng, kind: str, base: dict, slots: dict) -> str:
    """The text of one injected document of noise `kind`, built from clean document `base`."""
    text = base["text"]
    if kind == "exact_dup":
        return text.replace(" ", "  ", 3) + "\n\n" if rng.random() < 0.5 else text
    if kind == "near_dup":
        return near_copy(rng, text)
    if kind == "mojibake":
        if base["lang"] == "zh" or rng.random() < 0.7:
            return to_mojibake(with_typography(rng, text))
        return broken_bytes(rng, with_typography(rng, text))
    if kind == "html":
        url = f"http://{rng.choice(['deals', 'promo', 'win'])}.example.com/{rng.randrange(1000)}"
        paras = "".join(f"<p>{p}</p>\n" for p in text.split("\n\n"))
        ad = rng.choice(AD_LINES).format(url=url)
        return f"<html><body><div class=\"nav\"><a href=\"{url}\">Home</a></div>\n{paras}<div class=\"ad\">{ad}</div>\n</body></html>"
    if kind == "pii":
        return insert_sentence(rng, text, fake_pii(rng, slots["first"]))
    if kind == "toxic":
        w = rng.choice(TOXIC_WORDS)
        return insert_sentence(rng, text, rng.choice([f"{slots['first']} is a total {w}.", f"Only an {w} would believe this.",
                                                      f"你这个{w}。" if ord(w[0]) > 0x3000 else f"What a {w}!"]))
    if kind == "bias":
        return insert_sentence(rng, text, rng.choice(BIAS_SENTENCES).format(**slots))
    if kind == "too_short":
        if base["lang"] == "zh":
            return text.split("\n")[-1][:rng.randrange(4, 15)]
        return " ".join(text.split()[:rng.randrange(2, 8)])
    if kind == "wrong_lang":
        lang = rng.choice(list(FOREIGN))
        sents = rng.sample(FOREIGN[lang], rng.randrange(4, 7))
        return " ".join(s.format(name=slots["name"], city=slots["city"], river=slots["river"]) for s in sents)
    raise ValueError(kind)


def inject_noise(rng, clean_docs, fresh_docs, slots_for, frac=0.15):
    """Noisy documents appended after `clean_docs`; returns (all_docs, labels {id: noise type}).

    clean_docs: the generated corpus; fresh_docs: extra clean documents (not in the corpus) to dirty;
    slots_for(rng) gives entity names for inserted sentences. About `frac` of the result is noise,
    split evenly over NOISE_TYPES. Code documents only get exact copies (an edit breaks their syntax, markup is code).
    """
    n_per_type = max(1, int(len(clean_docs) * frac / len(NOISE_TYPES)))
    prose = [d for d in fresh_docs if d["domain"] != "code"]
    noisy, labels = [], {}
    for t, kind in enumerate(NOISE_TYPES):
        for k in range(n_per_type):
            if kind == "exact_dup":
                base = rng.choice(clean_docs)
            elif kind == "near_dup":  # an edited program no longer parses: it would fail a different filter
                base = rng.choice([d for d in clean_docs if d["domain"] != "code"])
            else:
                base = prose[(t * n_per_type + k) % len(prose)]
            doc = {"id": f"nz{len(noisy):06d}", "domain": base["domain"],
                   "lang": "other" if kind == "wrong_lang" else base["lang"],
                   "text": make_noisy(rng, kind, base, slots_for(rng))}
            noisy.append(doc)
            labels[doc["id"]] = kind
    rng.shuffle(noisy)
    return clean_docs + noisy, labels
