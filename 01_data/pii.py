"""Personal data out of a corpus: each type found, validated, and replaced by its own placeholder.

    from pii import mask_pii_counts
    mask_pii_counts("Mail anna@example.com or call +1 415 555 0100.")
    # -> ("Mail |||EMAIL_ADDRESS||| or call |||PHONE_NUMBER|||.", {"email": 1, "phone": 1})

clean.py runs `mask_pii` as one step of every document (`python 01_data/prepare.py --out runs/tiny`);
pii_eval.py scores it on injected PII written in formats these patterns were not written from, and
on clean text (years, prices, versions, product codes) that must stay as it is.

Types: e-mails (also "name at example dot com"), phone numbers (bare digits, separators, parentheses,
+1 / +86 / 00 prefixes, Chinese mobiles), IPv4 and IPv6, payment cards (Luhn), Chinese resident IDs
(the ISO 7064 check digit), US SSNs, passports (after the word). A loose pattern finds candidates;
a validator decides: a checksum, a plausible shape, the words in front.

Interview questions it answers:
- Mask or drop PII? (masking keeps the useful text and the sentence structure; a placeholder token
  tells the model "an e-mail goes here" without leaking one)
- How do you avoid masking order numbers and years? (validate: a card must pass Luhn and be printed
  like a card, a phone must have a phone's shape or words like "call" in front; "order", "SKU" and
  "ISBN" in front mean it is not personal)
"""

import ipaddress
import re

# Personal data, each type masked by its own placeholder (Dolma's |||EMAIL_ADDRESS||| style: the model
# learns "an address goes here" and never sees one). Numbers are found by a loose pattern and then
# *validated*: a checksum (Luhn for cards, ISO 7064 for Chinese IDs), a plausible shape (a phone's
# digit count and grouping), and the words around it ("call", "tel" vs "order", "SKU", "model").
# Boundaries are ASCII ([A-Za-z0-9_], not \w): in "手机号是13812345678" the 是 is a \w character.
PLACEHOLDER = {
    "email": "|||EMAIL_ADDRESS|||",
    "phone": "|||PHONE_NUMBER|||",
    "ip": "|||IP_ADDRESS|||",
    "card": "|||CREDIT_CARD|||",
    "cn_id": "|||CN_ID_NUMBER|||",
    "ssn": "|||US_SSN|||",
    "passport": "|||PASSPORT|||",
}
EMAIL = re.compile(
    r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b"
    r"|\b[\w.+-]+ ?(?: at |\(at\)|\[at\]) ?[\w-]+(?:(?: dot | ?[(\[]dot[)\]] ?)[\w-]+)*(?: dot | ?[(\[]dot[)\]] ?)[a-z]{2,6}\b"
)
IPV4 = re.compile(
    r"(?<![A-Za-z0-9_.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"
)
IPV6 = re.compile(
    r"(?<![A-Za-z0-9_:.])(?=[0-9a-fA-F:]*\d)[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}(?![A-Za-z0-9_:])"
)
CN_ID = re.compile(r"(?<![A-Za-z0-9_])\d{17}[\dXx](?![A-Za-z0-9_])")
SSN = re.compile(r"(?<![A-Za-z0-9_-])(?!000)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![A-Za-z0-9_-])")
CARD = re.compile(r"(?<![A-Za-z0-9_+-])\d(?:[ -]?\d){12,18}(?![A-Za-z0-9_-]|[ -]\d)")
PASSPORT = re.compile(
    r"(?<![A-Za-z0-9_])[A-Z]{1,2}\d{6,9}(?![A-Za-z0-9_])"
)  # only after the word: alone it is any code
PASSPORT_BEFORE = re.compile(r"(?i)(?:passport|护照)(?: no\.?| number| #|号码?)?\W{0,3}$")
PHONE = re.compile(
    r"(?<![A-Za-z0-9_+.,/-])(?:(?:\+|00)\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,8}){1,5}(?![A-Za-z0-9_]|[ .,/:-]?\d)"
)
PHONE_WORDS = re.compile(
    r"(?i)(?:phone|tel|call|mobile|cell|fax|whatsapp|sms|text me|ring|dial|电话|手机|联系|微信|致电)\W{0,3}\w{0,12}\W{0,3}$"
)
NOT_PHONE_WORDS = re.compile(
    r"(?i)(?:order|sku|model|part|serial|isbn|ref|invoice|tracking|item|product|code|account|no\.|#|编号|订单|型号)"
    r"(?:\s*(?:no\.?|number|num|#|id))?\W{0,3}$"
)
VERSION_BEFORE = re.compile(r"(?i)\b(?:version|ver\.?|v|build|release)\s*$")  # "v1.2.3.4" is not an address
CN_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
DIGITS = re.compile(r"\d")
NINE_DIGITS = re.compile(r"\d(?:[ ().+-]{0,2}\d){8}")  # IDs, cards, SSNs have at least 9 digits
SEVEN_DIGITS = re.compile(r"\d(?:[ ().+-]{0,2}\d){6}")  # and phones at least 7


def luhn_ok(digits: str) -> bool:
    """The check digit every payment card number carries (ISO/IEC 7812): it tells a card number from
    any other 16 digits, so a long order number is not masked."""
    # >>> exercise: Luhn: from the right double every 2nd digit (minus 9 if > 9); valid when the digit sum % 10 == 0
    total = 0
    for i, d in enumerate(map(int, reversed(digits))):
        total += d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d)
    return total % 10 == 0
    # <<< exercise


def cn_id_ok(number: str) -> bool:
    """A Chinese resident ID (GB 11643): 6-digit region, 8-digit birth date, 3-digit order, and an
    ISO 7064 MOD 11-2 check digit: sum(weight_i * d_i) mod 11 indexes "10X98765432"."""
    birth_year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
    if not (1900 <= birth_year <= 2030 and 1 <= month <= 12 and 1 <= day <= 31):
        return False
    total = sum(w * int(d) for w, d in zip(CN_ID_WEIGHTS, number[:17]))
    return "10X98765432"[total % 11] == number[17].upper()


def card_ok(candidate: str, before: str) -> bool:
    """A payment card: 13-19 digits, written bare or grouped as cards print them (4-4-4-4,
    Amex 4-6-5), not after "ISBN" or "order", and passing Luhn (which 1 in 10 random numbers also do)."""
    shape = [len(g) for g in re.split(r"[ -]", candidate)]
    printed = (
        len(shape) == 1 or shape in ([4, 6, 5], [4, 6, 4]) or (set(shape[:-1]) == {4} and shape[-1] <= 4)
    )
    return printed and not NOT_PHONE_WORDS.search(before) and luhn_ok(re.sub(r"\D", "", candidate))


def phone_ok(candidate: str, before: str) -> bool:
    """Is this run of digits a phone number? `before`: the 30 characters in front of it.

    A loose pattern finds the runs; this decides by shape: the words in front ("call", "tel" yes;
    "order", "SKU" no), a country prefix (+ or 00), an area code in parentheses or with a trunk 0,
    or a national grouping (North America 3-3-4, Chinese mobile 3-4-4 or 11 bare digits starting
    1[3-9], 10 bare digits in the North American numbering plan). Years in a row ("1990 2000
    2010"), dates and sums fit none of these."""
    digits = "".join(DIGITS.findall(candidate))
    n = len(digits)
    if NOT_PHONE_WORDS.search(before):
        return False
    if PHONE_WORDS.search(before):
        return 7 <= n <= 15
    if candidate.startswith(("+", "00")):
        return 8 <= n <= 15
    groups = re.findall(r"\d+", candidate)
    nanp = n == 10 and digits[0] in "23456789" and digits[3] in "23456789"
    cn_mobile = n == 11 and digits[0] == "1" and digits[1] in "3456789"
    if len(groups) == 1:
        return nanp or cn_mobile
    if "(" in candidate:
        return 9 <= n <= 12
    shape = [len(g) for g in groups]
    if shape == [3, 3, 4]:
        return nanp
    if shape == [3, 4, 4]:
        return cn_mobile
    return digits[0] == "0" and 9 <= n <= 12 and len(groups[0]) <= 5


def mask_pii_counts(text):
    """(masked text, {type: count}): each PII type replaced by its placeholder, in an order where a
    longer, checkable number (ID, card) is tried before the looser phone pattern can claim it."""
    counts = {}

    def sub(kind, pattern, out, check=lambda s, before: True):
        def repl(m):
            if not check(m.group(0), out[max(0, m.start() - 30) : m.start()]):
                return m.group(0)
            counts[kind] = counts.get(kind, 0) + 1
            return PLACEHOLDER[kind]

        return pattern.sub(repl, out)

    out = text
    if "@" in out or " at " in out or "(at)" in out or "[at]" in out:
        out = sub("email", EMAIL, out)
    if out.count(":") >= 2:
        out = sub("ip", IPV6, out, lambda s, _: ipv6_ok(s))
    if "." in out:
        out = sub("ip", IPV4, out, lambda s, before: not VERSION_BEFORE.search(before))
    if NINE_DIGITS.search(out):  # the number patterns are slow to try at every position; most texts skip them
        out = sub("cn_id", CN_ID, out, lambda s, _: cn_id_ok(s))
        out = sub("card", CARD, out, card_ok)
        out = sub("ssn", SSN, out)
    if "assport" in out or "护照" in out:
        out = sub("passport", PASSPORT, out, lambda s, before: bool(PASSPORT_BEFORE.search(before)))
    if SEVEN_DIGITS.search(out):
        out = sub("phone", PHONE, out, phone_ok)
    return out, counts


def ipv6_ok(candidate: str) -> bool:
    """A real IPv6 address (the stdlib parser decides), not a time "10:30:00" or a C++ "a::b"."""
    if len(candidate) < 6 or candidate.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(candidate)
        return True
    except ValueError:
        return False


def mask_pii(text):
    out, counts = mask_pii_counts(text)
    return out, bool(counts)
