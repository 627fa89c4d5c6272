"""User feedback on a served model's answers, kept as training data for the next round.

This is the last step of the loop the pipeline describes: serve a model, let users rate its answers,
train on what they said, serve the new model. The chat page and the terminal chat (07's serve.py and
chat.py) let a user rate an answer up or down and, for a down-rated one, write a better answer. Each
rating is one line appended to `<run>/feedback/feedback.jsonl`:

    {"time": "2026-12-07T05:40:00Z", "model": "runs/tiny/sft",
     "messages": [{"role": "user", "content": "Where does Belmo Tarin live?"}],
     "answer": "Belmo Tarin lives in Ravo.", "rating": "down", "better": "Belmo Tarin lives in Lomaro."}

`messages` is the conversation the answer was given to (it ends with the user's turn). Then:

- SFT (`sft.py --feedback FILE`): an up-rated answer, or the better answer of a down-rated one, is
  one more conversation to imitate (`feedback_conversations`);
- DPO (`dpo.py --feedback FILE`): a down-rated answer with a better one is a preference pair,
  chosen = the better answer, rejected = the model's own (`feedback_pairs`). These pairs are
  on-policy: the rejected side is what this very model said.
- A down-rating without a better answer says what not to do but not what to do. It is kept and
  counted but trains neither (an unpaired method such as KTO could use it).

Appending, not rewriting: the server appends each rating with one `write` to a file opened in append
mode, under a lock, and never inside the engine thread, so rating never blocks generation. A crash can
at worst leave the last line torn (no newline); `read_feedback` skips such a last line and says so,
and refuses any other bad line with its line number.

    python 07_distill_quant/serve.py --ckpt runs/tiny/sft/adapter.pt    # rate answers on the page
    python 05_sft_lora/sft.py --run runs/tiny --feedback runs/tiny/feedback/feedback.jsonl

Interview questions it answers:
- How does user feedback get back into the model? (logged ratings become SFT examples, when the user
  supplied a better answer or liked the model's, and preference pairs, when a disliked answer has a
  better one; then the next SFT/DPO round trains on them, mixed with the original data so one user's
  taste does not overwrite everything else)
- Why not fine-tune on the thumbs-up answers alone? (they are what the model already does: it
  learns little, and the users who rate are not a random sample; the pairs carry the information of
  what to change)
- What can go wrong with a feedback loop? (a few users dominate, ratings reward flattery or length
  rather than truth, a wrong "better" answer is learnt as fact: check feedback before training on it)
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from common.files import read_text

from chat_template import check_messages  # this stage

RATINGS = ("up", "down")
_APPEND_LOCK = threading.Lock()  # one server process: its handler threads append one at a time


def feedback_path_for(ckpt) -> Path:
    """Where ratings of the model in `ckpt` go: <run>/feedback/feedback.jsonl when the checkpoint sits
    in a run folder (runs/<name>/<stage>/file.pt beside runs/<name>/tokenizer), else beside it."""
    ckpt = Path(ckpt)
    run = ckpt.parent.parent if (ckpt.parent.parent / "tokenizer").is_dir() else ckpt.parent
    return run / "feedback" / "feedback.jsonl"


def check_feedback(rec, where="feedback") -> dict:
    """The record with its fields checked; a UserError naming the field otherwise. `where`: a file
    and line, or 'request'."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: a rating must be a JSON object with messages, answer and rating")
    messages = rec.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be the non-empty list of turns the answer replies to")
    # it ends with the user's turn: check it as a conversation ending with the (rated) answer
    check_messages(messages + [{"role": "assistant", "content": ""}], where)
    if messages[-1]["role"] != "user":
        raise UserError(f"{where}: 'messages' must end with the user's turn that the answer replies to")
    for name in ("answer", "model", "time"):
        if not isinstance(rec.get(name, ""), str):
            raise UserError(f"{where}: '{name}' must be a string")
    if "answer" not in rec:
        raise UserError(f"{where}: 'answer' (the model's answer that is rated) is required")
    if rec.get("rating") not in RATINGS:
        raise UserError(f"{where}: 'rating' must be one of {', '.join(RATINGS)}, not {rec.get('rating')!r}")
    better = rec.get("better")
    if better is not None:
        if not isinstance(better, str) or not better.strip():
            raise UserError(f"{where}: 'better' must be a non-empty string (or left out)")
        if rec["rating"] != "down":
            raise UserError(
                f"{where}: 'better' goes with rating 'down' only (an up-rated answer is the answer)"
            )
    unknown = sorted(set(rec) - {"messages", "answer", "rating", "better", "model", "time"})
    if unknown:
        raise UserError(
            f"{where}: unknown field {unknown[0]!r}; a rating has messages, answer, rating, better, model, time"
        )
    return rec


def append_feedback(path, rec) -> dict:
    """Check `rec`, stamp its time, append it as one line of `path` (made with its folder if needed).
    One os.write of the whole line to an O_APPEND file: lines of concurrent writers never interleave."""
    rec = dict(check_feedback(rec, "request"))
    rec.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    line = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
    path = Path(path)
    with _APPEND_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)  # a rating the user saw acknowledged survives a power cut
        finally:
            os.close(fd)
    return rec


def read_feedback(path) -> list:
    """The checked ratings of a feedback file. A torn last line (no newline: a crash mid-append) is
    skipped with a note on stderr; any other line that is not a rating is an error naming it."""
    text = read_text(path)
    lines = text.split("\n")
    torn = lines.pop() if lines else ""  # after the last newline: "" unless the last append was torn
    if torn.strip():
        print(f"note: {path}: skipping its last line, which was cut off mid-write", file=sys.stderr)
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not JSON ({e.msg}); fix or delete that line") from None
        out.append(check_feedback(rec, f"{path}:{n}"))
    return out


def feedback_conversations(records) -> list:
    """SFT examples, messages-style: the up-rated answers and the better answers of down-rated ones."""
    out = []
    for rec in records:
        answer = rec["answer"] if rec["rating"] == "up" else as_model_writes(rec.get("better"), rec["answer"])
        if answer is not None:
            out.append({"messages": rec["messages"] + [{"role": "assistant", "content": answer}]})
    return out


def as_model_writes(better, answer: str):
    """The user's better answer with the leading whitespace of the model's own (rated) answer.

    Why: 05's English answers start with a space (01's tasks.answer_content, a "dummy prefix": byte-level
    BPE folds the space into the next word's token), so the model writes " Belmo Tarin lives in Ravo."
    A user types "Belmo Tarin lives in Lomaro.", which the chat strips; trained as typed, its first
    token is another token than the one the model starts every answer with, and the correction teaches
    a new way to begin an answer instead of the fact. Given the same start, it differs only in the fact."""
    if better is None or better[:1].isspace():
        return better
    return answer[: len(answer) - len(answer.lstrip())] + better


def feedback_pairs(records) -> list:
    """Preference pairs in 06's format: the better answer over the model's down-rated one."""
    return [
        {
            "prompt": rec["messages"],
            "chosen": as_model_writes(rec["better"], rec["answer"]),  # else the space alone tells them apart
            "rejected": rec["answer"],
            "rule": "user_feedback",
        }
        for rec in records
        if rec["rating"] == "down" and rec.get("better") is not None
    ]


def feedback_counts(records) -> dict:
    """How many ratings of each kind, and how many train SFT and DPO."""
    return {
        "ratings": len(records),
        "up": sum(r["rating"] == "up" for r in records),
        "down": sum(r["rating"] == "down" for r in records),
        "down_with_better": sum(r["rating"] == "down" and r.get("better") is not None for r in records),
        "sft_examples": len(feedback_conversations(records)),
        "preference_pairs": len(feedback_pairs(records)),
    }
