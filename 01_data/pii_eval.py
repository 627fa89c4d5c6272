"""A held-out test of the PII masker: formats it was not written against, and clean text full of numbers.

    from pii_eval import held_out_pii, number_rich_clean_text, pii_scores
    pii_scores(mask_fn)   # {"recall": ..., "per_type": {...}, "false_masks_per_10k_tokens": ...}

Neither noise_inject.py's fake_pii nor the examples in clean.py's comments and tests are used here:
these are other real-world spellings (an Amex card in 4-6-5 groups, a French number in pairs,
an IPv6 address in its compressed form, an e-mail inside angle brackets, a Chinese mobile in
3-4-4 with spaces, a Chinese ID ending in a lowercase x, ...). The clean side is the text a masker
most likely hurts: years and year ranges, prices, software versions and build numbers, dates and
times, ISBNs, EAN barcodes, part numbers shaped like phone numbers, coordinates, scores, big counts.

Goals (issue 25): recall >= 0.95 per type on the held-out PII, and at most 1 false mask per 10,000
tokens of the clean text. bench_clean.py prints both, beside presidio-analyzer when installed.

Interview question it answers: how do you measure a PII filter? (recall on PII it was not tuned
on -- per type, since one missed format is a systematic leak -- and false masks per token on the
numbers that look like PII: a masker that eats every price ruins the data)
"""

import random

from pii import CN_ID_WEIGHTS, luhn_ok
from html_text import text_tokens

FIRST = ["ana", "li.wei", "j_smith", "maria-luisa", "tom42", "o.brien", "zhang.san", "k.tanaka"]
DOMAINS = ["uni-bonn.de", "mail.example.co.jp", "company-mail.io", "dept.state.gov", "foxmail.com"]


def luhn_complete(rng, prefix: str, length: int) -> str:
    """A card number of `length` digits starting with `prefix` whose last digit makes Luhn pass."""
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    return next(body + c for c in "0123456789" if luhn_ok(body + c))


def cn_id(rng) -> str:
    """A Chinese resident ID with a valid birth date and check digit (GB 11643)."""
    body = (
        f"{rng.randrange(110000, 659999)}{rng.randrange(1940, 2010)}{rng.randrange(1, 13):02d}"
        f"{rng.randrange(1, 29):02d}{rng.randrange(1000):03d}"
    )
    return body + "10X98765432"[sum(w * int(c) for w, c in zip(CN_ID_WEIGHTS, body)) % 11]


def held_out_pii(rng):
    """(sentence, type) pairs: one PII item each, in spellings the patterns were not written from."""
    d = lambda n: "".join(str(rng.randrange(10)) for _ in range(n))
    user, dom = rng.choice(FIRST), rng.choice(DOMAINS)
    mobile = f"1{rng.choice('3456789')}{d(9)}"
    a, b = rng.randrange(201, 989), rng.randrange(201, 989)
    card16 = luhn_complete(rng, rng.choice(["51", "52", "55", "4"]), 16)
    amex = luhn_complete(rng, rng.choice(["34", "37"]), 15)
    ident = cn_id(rng)
    v6 = ":".join(f"{rng.randrange(65536):x}" for _ in range(4))
    return [
        (f"Send the form to <{user}@{dom}> before Friday.", "email"),
        (f"CONTACT: {user.upper()}@{dom.upper()}; replies within a day.", "email"),
        (f"For press enquiries, write to {user} [at] {dom.replace('.', ' [dot] ')}.", "email"),
        (f"Ring me at {a}-{b}-{d(4)} after six.", "phone"),
        (f"The clinic's number is ({a}) {b}.{d(4)}.", "phone"),
        (f"Bureau de Paris : +33 1 {d(2)} {d(2)} {d(2)} {d(2)}", "phone"),
        (f"Mobile: +49 151 {d(8)}", "phone"),
        (f"如有问题请拨打 {mobile[:3]} {mobile[3:7]} {mobile[7:]} 联系王老师。", "phone"),
        (f"客服热线：(0{rng.randrange(10, 99)}) {d(4)}-{d(4)}", "phone"),
        (f"WhatsApp +91 {d(5)} {d(5)} for bookings.", "phone"),
        (
            f"The login came from {rng.randrange(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}:8443 at night.",
            "ip",
        ),
        (f"Block 2001:db8:{v6}::{rng.randrange(1, 65536):x} in the firewall.", "ip"),
        (
            f"Link-local fe80::{d(1)}{rng.randrange(4096):x}:{rng.randrange(65536):x} shows up in the log.",
            "ip",
        ),
        (f"Card: {card16}", "card"),
        (f"Charged to {card16[:4]}-{card16[4:8]}-{card16[8:12]}-{card16[12:]} on 3 May.", "card"),
        (f"Amex {amex[:4]} {amex[4:10]} {amex[10:]}, exp. 11/27", "card"),
        (f"居民身份证：{ident.lower()}", "cn_id"),
        (f"Her Chinese ID ({ident}) was on the form.", "cn_id"),
    ]


CLEAN_TEMPLATES = [
    "The bridge was built between {y1} and {y2} and rebuilt in {y3}.",
    "In {y1}, {y2} and {y3} the market grew; by {y4} it had {big:,} customers.",
    "The phone costs ${p1:,}.99, or €{p2}.50 a month over {m} months.",
    "售价 ¥{p1}，比去年便宜了 {m}%。",
    "Upgrade to version {v1}.{v2}.{v3} (build {b1}.{b2}.{b3}.{b4}) before {y1}-{mo:02d}-{dd:02d}.",
    "Python {v1}.{v2}.{v3} and numpy {v2}.{v3}.{v1} were released on {dd:02d}/{mo:02d}/{y1}.",
    "The train leaves at {hh:02d}:{mi:02d}:00 on {dd:02d}.{mo:02d}.{y1} from platform {m}.",
    "ISBN 978-{d1}-{d3}-{d5}-{d1b}, {pages} pages.",
    "Barcode {ean} is printed under the lid.",
    "Order no. {ord1} shipped; part number {pa}-{pb}-{pc} is back in stock.",
    "Model {y1}-{pb}-{pc} replaces model {y2}-{pb}-{pc}.",
    "The summit lies at {lat}.{lat2}, {lon}.{lon2} and is {h:,} m high.",
    "They won {s1}-{s2}, then {s2}-{s1}, and drew {s1}-{s1} in {y1}.",
    "The population rose from {big:,} to {big2:,} between {y1} and {y3}.",
    "Serial {ser} was registered in {y2}; invoice {ord2} is paid.",
    "Table 3: {f1}.{f2} ± 0.{f3} (n = {n}), p = 0.00{f3}.",
    "他在{y1}年{mo}月{dd}日出生，身高{h2}厘米，体重{m}公斤。",
    "Kernel 5.{v2}.{b2}-{b3}-generic on {y1}.{mo:02d}.{dd:02d} builds.",
    "Between {y1}–{y2} the fleet grew from {s1}{s2}0 to {s2}{s1}00 buses.",
    "Room {rm}, floor {m}, open {hh:02d}:00-{mi:02d}:30.",
]


def number_rich_clean_text(rng, n_sentences=400) -> str:
    """Clean sentences holding years, prices, versions, dates, codes and counts, but no PII."""
    out = []
    for _ in range(n_sentences):
        y = sorted(rng.randrange(1900, 2030) for _ in range(4))
        d = lambda n: "".join(str(rng.randrange(10)) for _ in range(n))
        out.append(
            rng.choice(CLEAN_TEMPLATES).format(
                y1=y[0],
                y2=y[1],
                y3=y[2],
                y4=y[3],
                big=rng.randrange(10**4, 10**8),
                big2=rng.randrange(10**4, 10**8),
                p1=rng.randrange(10, 5000),
                p2=rng.randrange(1, 99),
                m=rng.randrange(2, 48),
                v1=rng.randrange(1, 20),
                v2=rng.randrange(0, 20),
                v3=rng.randrange(0, 20),
                b1=rng.randrange(1, 12),
                b2=rng.randrange(0, 30000),
                b3=rng.randrange(0, 9999),
                b4=rng.randrange(0, 9999),
                mo=rng.randrange(1, 13),
                dd=rng.randrange(1, 29),
                hh=rng.randrange(24),
                mi=rng.randrange(60),
                d1=d(1),
                d3=d(3),
                d5=d(5),
                d1b=d(1),
                pages=rng.randrange(90, 900),
                ean=d(13),
                ord1=d(rng.randrange(8, 13)),
                ord2=d(10),
                pa=d(3),
                pb=d(4),
                pc=d(4),
                lat=rng.randrange(-89, 89),
                lat2=d(4),
                lon=rng.randrange(-179, 179),
                lon2=d(4),
                h=rng.randrange(100, 8848),
                s1=rng.randrange(10),
                s2=rng.randrange(10),
                f1=rng.randrange(100),
                f2=d(2),
                f3=d(1),
                n=rng.randrange(10, 999),
                h2=rng.randrange(140, 200),
                ser=f"SN{d(10)}",
                rm=d(3),
            )
        )
    return " ".join(out)


def pii_scores(mask_counts, seed=0, rounds=30, clean_sentences=400):
    """Recall per type on held-out PII and false masks per 10,000 tokens of clean number-rich text.

    mask_counts(text) -> (masked text, {type: count})."""
    rng = random.Random(seed)
    found, total = {}, {}
    for _ in range(rounds):
        for sentence, kind in held_out_pii(rng):
            total[kind] = total.get(kind, 0) + 1
            found[kind] = found.get(kind, 0) + (sum(mask_counts(sentence)[1].values()) >= 1)
    clean = number_rich_clean_text(random.Random(seed + 1), clean_sentences)
    n_false = sum(mask_counts(clean)[1].values())
    tokens = len(text_tokens(clean))
    return {
        "recall": sum(found.values()) / sum(total.values()),
        "per_type": {k: found[k] / total[k] for k in total},
        "items": sum(total.values()),
        "false_masks": n_false,
        "clean_tokens": tokens,
        "false_masks_per_10k_tokens": 1e4 * n_false / tokens,
    }
