"""Labelled noise injection: turn clean generated documents into the dirt that real web text has.

Real corpora are full of duplicates, broken encodings, markup, personal data, toxic and biased text,
fragments and other languages. We inject each kind on purpose, into copies of clean documents, and
keep a label per injected document (the "sidecar" `noise_labels.jsonl`), so every cleaning step can
be scored: of the documents it caught, how many were really that noise (precision), and of the
injected ones, how many it caught (recall).

A score means something only if the filter was not written from the injector's answer key. So this
file imports nothing from clean.py and clean.py nothing from here: the phrasings below were written
as examples of what such text looks like in the wild (insults with and without profanity, masked
swear words, stereotypes in many grammatical shapes, e-mails written out as "name at domain dot
com", phone numbers in several national formats, mojibake made by several wrong decoders, ...). They
overlap the filters' own lexicons and patterns only partly, as real text would, so the table shows
what a filter catches, below 1.000 where it misses.

Noise types (one per injected document):
    exact_dup   a copy of a clean document (identical, or with spacing or line endings changed: equal
                after the normalization exact dedup hashes)
    near_dup    a copy with small word edits (from 1 per 60 words to 1 per 12), sometimes a new header
                line, or with its quotes "smartened" (' -> ’): another string, so a near duplicate
    mojibake    UTF-8 bytes decoded as cp1252 (keeping or losing its 5 undefined bytes) or latin-1, twice
                over, in one paragraph only, or bytes damaged into U+FFFD
    html        a web page (tags, scripts, entities, ad lines with URLs) or a fragment with inline tags
    pii         e-mail addresses, phone numbers, ID, passport or card numbers in a sentence
    toxic       an insult or profanity, sometimes masked ("f*ck")
    bias        a gender, origin or age stereotype
    too_short   a fragment of a few words, a navigation snippet or a "Loading..." line
    wrong_lang  a French, Spanish, German, Portuguese or Dutch document (the corpus is English and Chinese)

Duplicates are appended after the clean documents: dedup keeps the first occurrence, so the copy is
what gets removed. Other noisy documents are built from fresh clean documents and appended likewise.

Interview question it answers: how do you know a cleaning pipeline works? (inject labelled noise,
measure precision and recall per filter -- with a filter that never saw the injector's lists --
and look at the false positives on real clean text)
"""

CN_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]  # GB 11643 check digit

NOISE_TYPES = ["exact_dup", "near_dup", "mojibake", "html", "pii", "toxic", "bias", "too_short", "wrong_lang"]

TOXIC_EN = [
    "{first} is a total idiot.",
    "Only a moron would believe this.",
    "What a pathetic loser.",
    "You are such a clown, {first}.",
    "Go to hell, you jerk.",
    "Nobody asked you, dumbass.",
    "This is the dumbest garbage I have ever read, written by a brainless fool.",
    "{first}, you worthless piece of trash.",
    "What the fuck is wrong with these people?",
    "Shut up and go away, nobody likes you.",
    "This town is full of idiots and losers.",
    "Get lost, scumbag.",
    "{first} is a stupid cow.",
    "You absolute imbecile.",
    "STFU, you dumb f*ck.",
    "Eat sh*t, {first}.",
    "Honestly, you are the ugliest person on this forum.",
    "Kill yourself, loser.",
]
TOXIC_ZH = [
    "你这个蠢货。",
    "滚开，废物！",
    "{first_zh}就是个白痴。",
    "你脑子有病吧？",
    "真是个傻X。",
    "去死吧你。",
    "闭嘴，蠢猪。",
    "{first_zh}这个贱人。",
]
BIAS_EN = [
    "Everyone knows women belong in the kitchen.",
    "Men are naturally better leaders than women.",
    "You can't trust anyone from {country}.",
    "People from {country} are all thieves.",
    "Old people are useless with computers.",
    "Girls just aren't good at science.",
    "Typical {country} behaviour: lazy and loud.",
    "Boys don't cry, and men who do are weak.",
    "Immigrants from {country} ruin every city they move to.",
    "A woman should never be the boss.",
    "{country} people are lazy and dishonest.",
    "Women can't drive, everyone knows that.",
]
BIAS_ZH = [
    "{country_zh}人天生就懒。",
    "女生学不好数学。",
    "农村人素质都很低。",
    "女人就该待在家里。",
    "男人都靠不住。",
    "外地人都是骗子。",
    "女人不适合当领导。",
]
AD_LINES = [
    "Click here to buy now! Best deals at {url}",
    "Limited time offer: 50% off everything at {url}",
    "Follow us on Instagram: {url}",
    "Download our free app today {url}",
    "Hot deals near you >> {url}",
    "Advertisement",
    "Sponsored content: {url}",
    "限时特价！点击 {url}",
]
FRAGMENTS = [
    "Home | About | Contact",
    "Loading...",
    "Read more »",
    "Page 2 of 7",
    "Share this:",
    "Top of page",
    "Comments (0)",
    "Log in to reply",
    "上一页 下一页",
    "点击查看更多",
]
FOREIGN = {
    "fr": [
        "{name} est un habitant de {city}, une ville au bord de la rivière {river}.",
        "Chaque matin, il boit un café et mange du pain avec de la confiture.",
        "Son animal préféré est un chat qui dort toute la journée près de la fenêtre.",
        "Les gens de {city} aiment beaucoup les marchés du dimanche et les fêtes d'été.",
        "Il travaille dans une boulangerie depuis plusieurs années avec ses amis.",
        "Le soir, la famille se réunit pour parler de la journée et écouter de la musique.",
    ],
    "es": [
        "{name} vive en {city}, una ciudad junto al río {river}.",
        "Todas las mañanas camina por la plaza y saluda a sus vecinos.",
        "Le gusta mucho cocinar sopa de verduras para toda la familia.",
        "En {city} hay un mercado grande donde venden frutas, pan y queso.",
        "Los niños juegan en el parque hasta que se pone el sol.",
        "Por la noche, escuchan la radio y hablan de sus planes para mañana.",
    ],
    "de": [
        "{name} wohnt in {city}, einer kleinen Stadt am Fluss {river}.",
        "Jeden Morgen trinkt er einen Kaffee und liest die Zeitung.",
        "Seine Katze schläft den ganzen Tag auf dem Sofa neben dem Fenster.",
        "In {city} gibt es einen schönen Markt mit frischem Brot und Käse.",
        "Am Wochenende fahren die Freunde mit dem Fahrrad durch den Wald.",
        "Abends sitzt die Familie zusammen und spricht über den Tag.",
    ],
    "pt": [
        "{name} mora em {city}, uma cidade perto do rio {river}.",
        "Todas as manhãs ela toma um café e lê o jornal na varanda.",
        "O gato da família dorme o dia inteiro perto da janela.",
        "Em {city} há uma feira grande onde vendem frutas, pão e queijo.",
        "As crianças brincam no parque até o sol se pôr.",
        "À noite, a família conversa sobre o dia e ouve música.",
    ],
    "nl": [
        "{name} woont in {city}, een kleine stad aan de rivier de {river}.",
        "Elke ochtend drinkt hij koffie en leest hij de krant.",
        "De kat slaapt de hele dag op de bank bij het raam.",
        "In {city} is een grote markt met vers brood en kaas.",
        "In het weekend fietsen de vrienden samen door het bos.",
        "'s Avonds zit de familie samen en praat over de dag.",
    ],
}


# ---------------------------------------------------------------------------------------------------
# Encodings: the ways real pipelines mangle UTF-8.


def to_mojibake(text: str, codec="cp1252", lose_undefined=False) -> str:
    """UTF-8 bytes read back in a single-byte codec: 'é' -> 'Ã©', '’' -> 'â€™', '你' -> 'ä½\u00a0'.

    cp1252 leaves 0x81, 0x8D, 0x8F, 0x90, 0x9D undefined: browsers show them as latin-1 would (C1
    control characters), a decoder with errors="ignore" drops them ('”' -> 'â€'); latin-1 turns all
    of 0x80-0x9F into C1 controls."""
    data = text.encode("utf-8")
    if codec == "latin-1":
        return data.decode("latin-1")
    return "".join(
        bytes([b]).decode("cp1252", errors="ignore") or ("" if lose_undefined else chr(b)) for b in data
    )


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


def mojibake_variant(rng, text: str) -> str:
    """One of the common ways text gets mangled, in rough order of how often one meets them."""
    r = rng.random()
    if r < 0.35:
        return to_mojibake(text)  # cp1252, undefined bytes shown
    if r < 0.55:
        return to_mojibake(text, lose_undefined=True)  # cp1252, undefined bytes lost
    if r < 0.65:
        return to_mojibake(text, codec="latin-1")  # latin-1: C1 controls
    if r < 0.75:
        return to_mojibake(to_mojibake(text))  # mangled twice
    if r < 0.88:  # one paragraph only (a quoted block), one that shows it
        sep = "\n\n" if "\n\n" in text else "\n"
        paras = text.split(sep)
        i = rng.choice([k for k, p in enumerate(paras) if not p.isascii()] or [0])
        paras[i] = to_mojibake(paras[i])
        return sep.join(paras)
    return broken_bytes(rng, text)


# ---------------------------------------------------------------------------------------------------
# Near copies and personal data.


def near_copy(rng, text: str, words_per_edit=60) -> str:
    """Small edits in the middle half of the text: one per `words_per_edit` words (characters in
    Chinese), at least one: deletions, insertions, swaps."""
    zh = len(text.split(" ")) < len(text) / 20  # few spaces: edit characters instead of words
    words = list(text) if zh else text.split(" ")
    for _ in range(max(1, len(words) // words_per_edit)):
        i = rng.randrange(
            len(words) // 4, max(len(words) // 4 + 1, 3 * len(words) // 4)
        )  # the middle: content, not nav/footer
        op = rng.randrange(3)
        if op == 0 and len(words) > 3:
            del words[i]
        elif op == 1:
            words.insert(
                i, rng.choice(["也", "还", "很"] if zh else ["really", "also", "very", "just", "then"])
            )
        elif i + 1 < len(words) and words[i] != words[i + 1]:
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            words.insert(i, "也" if zh else "so")
    return ("" if zh else " ").join(words)


def luhn_digit(digits: str) -> str:
    """The check digit that makes `digits` + it a valid card number (ISO/IEC 7812)."""
    total = 0
    for i, d in enumerate(map(int, reversed(digits))):
        total += 2 * d - 9 if i % 2 == 0 and d > 4 else 2 * d if i % 2 == 0 else d
    return str(-total % 10)


def fake_pii(rng, who):
    """A sentence about `who` holding one made-up e-mail, phone, ID, passport or card number."""
    d = lambda n: "".join(str(rng.randrange(10)) for _ in range(n))
    user = rng.choice(
        [who.lower(), f"{who.lower()}.{d(2)}", f"{who[0].lower()}_{d(4)}", f"{who.lower()}+news"]
    )
    domain = rng.choice(["mail.com", "example.org", "qq.com", "post.example.co.uk", "163.com", "univ.edu"])
    kind = rng.randrange(9)
    if kind == 0:
        return rng.choice(
            [
                f"You can write to {who} at {user}@{domain}.",
                f"联系邮箱：{user}@{domain}",
                f"Questions? Email {user.upper()}@{domain.upper()} anytime.",
            ]
        )
    if kind == 1:  # written out to dodge scrapers; it still identifies a person
        return f"Reach {who} at {user} at {domain.replace('.', ' dot ')}."
    if kind == 2:
        a, b, c = rng.randrange(201, 999), rng.randrange(200, 999), d(4)
        return rng.choice(
            [
                f"Call {who} on +1 {a}-{b}-{c} any time.",
                f"Phone: ({a}) {b}-{c}",
                f"{who}'s cell is {a}.{b}.{c}.",
                f"Call {who} on {a}{b}{c}.",
            ]
        )
    if kind == 3:
        return rng.choice([f"Our London office: +44 20 {d(4)} {d(4)}.", f"Tel. 0049 30 {d(7)}"])
    if kind == 4:
        mobile = f"1{rng.choice('3589')}{d(9)}"
        return rng.choice(
            [
                f"{who}的手机号是{mobile}。",
                f"电话：{mobile[:3]}-{mobile[3:7]}-{mobile[7:]}",
                f"微信同号 +86 {mobile}",
            ]
        )
    if kind == 5:
        id_number = (
            f"{rng.randrange(110000, 659999)}{rng.randrange(1950, 2005)}{rng.randrange(1, 13):02d}"
            f"{rng.randrange(1, 29):02d}{d(3)}"
        )
        id_number += "10X98765432"[
            sum(w * int(c) for w, c in zip(CN_ID_WEIGHTS, id_number)) % 11
        ]  # 18 characters
        return rng.choice([f"{who}'s ID number is {id_number}.", f"身份证号：{id_number}"])
    if kind == 6:
        return f"{who}'s social security number is {d(3)}-{d(2)}-{d(4)}."
    if kind == 7:
        card = "4" + d(14)
        card += luhn_digit(card)
        return f"Paid with card {' '.join(card[i : i + 4] for i in range(0, 16, 4))}, expires 0{rng.randrange(1, 10)}/2{d(1)}."
    return f"Passport no. {rng.choice('EGPK')}{d(8)}, issued to {who}."


def insert_sentence(rng, text: str, sentence: str) -> str:
    lines = text.split("\n")
    i = rng.randrange(len(lines) + 1)
    return "\n".join(lines[:i] + [sentence] + lines[i:])


def html_page(rng, text: str) -> str:
    url = f"http://{rng.choice(['deals', 'promo', 'win', 'shop'])}.example.com/{rng.randrange(1000)}"
    ad = rng.choice(AD_LINES).format(url=url)
    paras = text.split("\n\n")
    if rng.random() < 0.3:  # a fragment scraped from inside a page: inline tags and entities only
        return (
            "<br>\n".join(p.replace(" and ", " &amp; ", 1).replace(". ", ".&nbsp; ", 1) for p in paras)
            + f'\n<a href="{url}">{ad}</a>'
        )
    body = "".join(f"<p>{p}</p>\n" for p in paras)
    script = (
        "<script>var _gaq = _gaq || []; _gaq.push(['_trackPageview']);</script>\n"
        if rng.random() < 0.5
        else ""
    )
    return (
        f"<!DOCTYPE html><html><head><title>{paras[0][:40]}</title>{script}</head><body>\n"
        f'<div class="nav"><a href="/">Home</a> | <a href="/news">News</a></div>\n{body}'
        f'<div class="ad">{ad}</div>\n<footer>&copy; 2021 &mdash; all rights reserved</footer></body></html>'
    )


def make_noisy(rng, kind: str, base: dict, slots: dict) -> str:
    """The text of one injected document of noise `kind`, built from clean document `base`."""
    text, zh = base["text"], base["lang"] == "zh"
    if kind == "exact_dup":  # identical once normalized: the copies exact dedup is for
        r = rng.random()
        if r < 0.5:
            return text
        if r < 0.75:
            return text.replace(" ", "  ", 3) + "\n\n"
        return text.replace("\n", "\r\n")
    if kind == "near_dup":
        if "'" in text and rng.random() < 0.15:  # a mirror that "smartens" quotes: a different string
            return text.replace("'", "\u2019")
        out = near_copy(rng, text, words_per_edit=rng.choice([60, 40, 25, 12]))
        if rng.random() < 0.3:
            out = rng.choice(["Posted by admin", "Updated 3 days ago", "转载请注明出处"]) + "\n" + out
        return out
    if kind == "mojibake":
        return mojibake_variant(rng, text if zh else with_typography(rng, text))
    if kind == "html":
        return html_page(rng, text)
    if kind == "pii":
        return insert_sentence(rng, text, fake_pii(rng, slots["first"]))
    if kind == "toxic":
        return insert_sentence(rng, text, rng.choice(TOXIC_ZH if zh else TOXIC_EN).format(**slots))
    if kind == "bias":
        return insert_sentence(rng, text, rng.choice(BIAS_ZH if zh else BIAS_EN).format(**slots))
    if kind == "too_short":
        r = rng.random()
        if r < 0.3:
            return rng.choice(FRAGMENTS)
        if zh:
            return text.split("\n")[-1][: rng.randrange(4, 15)]
        return " ".join(text.split()[: rng.randrange(2, 12)])
    if kind == "wrong_lang":
        lang = rng.choice(list(FOREIGN))
        sents = rng.sample(FOREIGN[lang], rng.randrange(3, 7))
        return " ".join(s.format(name=slots["name"], city=slots["city"], river=slots["river"]) for s in sents)
    raise ValueError(kind)


def inject_noise(rng, clean_docs, fresh_docs, slots_for, frac=0.15):
    """Noisy documents appended after `clean_docs`; returns (all_docs, labels {id: noise type}).

    clean_docs: the generated corpus; fresh_docs: extra clean documents (not in the corpus) to dirty;
    slots_for(rng) gives entity names for inserted sentences. About `frac` noisy documents per clean
    one, split evenly over NOISE_TYPES (none when frac is 0). Code documents only get exact copies
    (an edit breaks their syntax, markup is code).
    """
    n_per_type = int(len(clean_docs) * frac / len(NOISE_TYPES))
    if frac > 0:
        n_per_type = max(1, n_per_type)
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
            doc = {
                "id": f"nz{len(noisy):06d}",
                "domain": base["domain"],
                "lang": "other" if kind == "wrong_lang" else base["lang"],
                "text": make_noisy(rng, kind, base, slots_for(rng)),
            }
            noisy.append(doc)
            labels[doc["id"]] = kind
    rng.shuffle(noisy)
    return clean_docs + noisy, labels
