"""SFT data: conversation files in, tokenized examples out, none of them cut.

Three input formats, told apart per record (one JSON object per line):

    messages   {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}], ...}
               (01_data's task sets add "subject" and "answer"; other keys are kept as they are)
    Alpaca     {"instruction": ..., "input": ..., "output": ...}   ("input" may be empty or absent)
               -> user: instruction, plus a blank line and the input when there is one; assistant: output

An example longer than the model's context is never truncated: a cut answer would teach the model to
stop mid-sentence, or its <|end|> would be lost and with it the signal to stop. It is skipped and
counted, or with `strict` it is an error.

Also here: a validation split by subject for early stopping (so it measures generalization to new
subjects, like the held-out set), and the curriculum order (easy -> hard by length or turns).

Interview questions it answers:
- What do you do with SFT examples longer than the context? (drop or split at turn boundaries, never
  truncate the answer; count what was dropped, since long examples are often the hard ones)
- What is curriculum learning and does it help SFT? (short/simple examples first; a mild gain at best
  at this scale; it mainly changes what early checkpoints can do)
"""

import random
import sys
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from common.files import read_jsonl, read_text
from chat_template import check_messages, encode_chat  # 05_sft_lora (this folder)


def alpaca_messages(rec, where) -> list:
    missing = [k for k in ("instruction", "output") if not isinstance(rec.get(k), str)]
    missing += [k for k in ("input",) if not isinstance(rec.get(k) or "", str)]  # optional, but a string
    if missing:
        raise UserError(
            f"{where}: Alpaca record has no string {missing[0]!r} field; each line needs "
            "'instruction' and 'output' (and optionally 'input')"
        )
    extra = rec.get("input") or ""
    user = rec["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]


def read_conversations(path) -> list:
    """Records of a messages- or Alpaca-style JSONL file, each with a checked "messages" list."""
    records = read_jsonl(path, required=())
    line_numbers = [n for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]
    out = []
    for rec, n in zip(records, line_numbers):
        where = f"{path}:{n}"
        if "messages" in rec:
            rec = dict(rec)
        elif "instruction" in rec or "output" in rec:
            rec = {**rec, "messages": alpaca_messages(rec, where)}
        else:
            raise UserError(
                f"{where}: record has no 'messages' field (nor Alpaca 'instruction'/'output'); "
                'write {"messages": [{"role": ..., "content": ...}]} per line'
            )
        check_messages(rec["messages"], where)
        out.append(rec)
    return out


def encode_examples(tok, records, block_size, strict=False, where="data"):
    """(examples, skipped): each example is {"input_ids", "labels", "n_turns", "record"}; records whose
    `len(ids) - 1` (what the model reads, after the shift) exceeds block_size are skipped, or with
    strict raise. skipped = how many."""
    examples, skipped = [], 0
    for i, rec in enumerate(records):
        ids, labels, _ = encode_chat(tok, rec["messages"])
        if len(ids) - 1 > block_size:
            if strict:
                raise UserError(
                    f"{where}: conversation {i + 1} is {len(ids)} tokens, longer than the model's "
                    f"context ({block_size} + 1); drop it or run without --strict to skip such examples"
                )
            skipped += 1
            continue
        examples.append({"input_ids": ids, "labels": labels, "n_turns": len(rec["messages"]), "record": rec})
    return examples, skipped


def split_validation(examples, frac, seed):
    """(train, val): about `frac` of the examples for early stopping, chosen by subject when the
    records have one (all questions about a person go to the same side), else by example."""
    if frac <= 0:
        return examples, []
    keys = sorted({ex["record"].get("subject", i) for i, ex in enumerate(examples)}, key=str)
    rng = random.Random(seed)
    held = set(rng.sample(keys, max(1, round(frac * len(keys)))))
    train = [ex for i, ex in enumerate(examples) if ex["record"].get("subject", i) not in held]
    val = [ex for i, ex in enumerate(examples) if ex["record"].get("subject", i) in held]
    return train, val


def epoch_order(examples, curriculum, epoch, seed) -> list:
    """The examples in the order of epoch `epoch`: shuffled, except that with a curriculum the first
    epoch goes easy -> hard (by token length or by number of turns; ties stay shuffled)."""
    order = list(examples)
    random.Random(seed * 1000 + epoch).shuffle(order)
    if curriculum != "none" and epoch == 0:
        key = (lambda ex: len(ex["input_ids"])) if curriculum == "length" else (lambda ex: ex["n_turns"])
        order.sort(key=key)  # a stable sort keeps the shuffle within ties
    return order
