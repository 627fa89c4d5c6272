"""Talk to any checkpoint in the terminal: the conversation is kept, the answer streams as it is made.

    python 07_distill_quant/chat.py --ckpt runs/tiny/sft/adapter.pt
    python 07_distill_quant/chat.py --ckpt runs/tiny/sft/adapter.pt --temperature 0 --system "Answer briefly."

Commands: /reset forgets the conversation; /settings shows the sampling settings and
`/settings temperature=0.2 max_tokens=64` changes them; /good and /bad rate the last answer, and
`/bad The better answer.` gives the answer it should have been (appended to --feedback, by default
<run>/feedback/feedback.jsonl, for `sft.py --feedback` and `dpo.py --feedback`: 05's feedback_data.py);
/help; /quit (or Ctrl-D). Ctrl-C quits.

It drives the same batching.Engine as serve.py, with the sequential policy (one request at a time),
stepping it in this thread and printing each piece of text as the request streams it. Checkpoints
load as in serve.py (served_model.load_model). Every turn sends the whole conversation again, rendered by 05's
chat template: the model keeps no state between calls. When the conversation no longer leaves room
for an answer of max_tokens (at most half the context), the oldest exchanges are dropped (the system prompt stays), and it says so.

Interview questions it answers:
- Where is a chat model's memory of the conversation? (only in the prompt: each turn re-sends the
  history; servers with prefix caching keep the history's KV cache to avoid recomputing it)
- What happens when a conversation outgrows the context? (something must go: here the oldest
  exchanges; others summarize them or retrieve the relevant ones)
"""

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "05_sft_lora")]
from common.cli import UserError, check_config, option, parse_config, run_cli
from chat_template import encode_prompt, special_ids  # 05_sft_lora
from feedback_data import append_feedback, feedback_path_for  # 05_sft_lora

from batching import Engine  # this stage
from serve_request import PENALTY_RANGE, Request, SamplingParams  # this stage
from served_model import model_from_flags  # this stage

SETTINGS = ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed")
HELP = (
    "commands: /reset (forget the conversation), /settings (show), /settings name=value ... (change: "
    f"{', '.join(SETTINGS)}), /good or /bad [the better answer] (rate the last answer), /help, /quit"
)


@dataclass
class ChatConfig:
    ckpt: str = option(
        "",
        "checkpoint to talk to: runs/<name>/sft/adapter.pt (LoRA SFT), sft/ckpt.pt (full) or pretrain/best.pt",
    )
    tokenizer: str = option("", "tokenizer folder (default: the one the checkpoint names)")
    system: str = option("", "system prompt, kept at the start of every turn (empty = none)")
    max_tokens: int = option(128, "longest answer in tokens (capped by what the context leaves)", min=1)
    temperature: float = option(0.7, "0 = greedy", min=0.0, max=2.0)
    top_p: float = option(0.95, "nucleus sampling mass (1 = off)", min=1e-6, max=1.0)
    top_k: int = option(0, "sample among the k most likely tokens (0 = off)", min=0)
    repetition_penalty: float = option(
        1.0, "CTRL's penalty on tokens already present (1 = off)", min=PENALTY_RANGE[0], max=PENALTY_RANGE[1]
    )
    seed: int = option(0, "seed of the first answer's sampling; turn t uses seed + t", min=0, max=2**64 - 1)
    feedback: str = option("", "JSONL file /good and /bad append to (default: <run>/feedback/feedback.jsonl)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps")
    threads: int = option(0, "torch CPU threads (0 = torch's default)", min=0)


class ChatSession:
    """A conversation with one model: the turns so far, the settings, one engine stepped here."""

    def __init__(self, engine: Engine, tok, cfg: ChatConfig):
        self.engine, self.tok, self.cfg = engine, tok, cfg
        self.turns = []  # user and assistant messages, oldest first
        self.feedback_path = Path(cfg.feedback) if cfg.feedback else feedback_path_for(cfg.ckpt)
        special_ids(tok)  # a UserError if it has no chat tokens
        # every special token ends the answer: none is text (else a stray <|pad|> is printed literally)
        self.stop_ids = list(tok.special_tokens.values())

    def prompt_ids(self, messages) -> tuple:
        """(ids, exchanges dropped): the oldest user+assistant pairs go until an answer of max_tokens
        (at most half the context) fits."""
        system = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
        ctx, dropped = self.engine.model.cfg.block_size, 0
        room = min(self.cfg.max_tokens, ctx // 2)  # else max_tokens = context would drop every turn
        ids = encode_prompt(self.tok, system + messages)
        while len(ids) + room > ctx and len(messages) > 1:
            messages, dropped = messages[2:], dropped + 1
            ids = encode_prompt(self.tok, system + messages)
        if len(ids) >= ctx:
            raise UserError(
                f"this message makes a prompt of {len(ids)} tokens but the model's context is {ctx}; "
                "write a shorter one (or /reset)"
            )
        return ids, dropped

    def reply(self, text, write):
        """Answer the user's `text`, writing the answer as it streams; returns the finished Request."""
        ids, dropped = self.prompt_ids(self.turns + [{"role": "user", "content": text}])
        if dropped:
            self.turns = self.turns[2 * dropped :]
            write(
                f"(dropped the {dropped} oldest exchange(s) to fit the {self.engine.model.cfg.block_size}-token context)\n"
            )
        c = self.cfg
        params = SamplingParams(
            max_tokens=min(c.max_tokens, self.engine.model.cfg.block_size - len(ids)),
            temperature=c.temperature,
            top_p=c.top_p,
            top_k=c.top_k or None,
            repetition_penalty=c.repetition_penalty,
            seed=(c.seed + len(self.turns) // 2) % 2**64,  # manual_seed takes at most 2**64 - 1
        )
        req = self.engine.submit(Request(ids, params, self.stop_ids))
        while self.engine.busy():
            self.engine.step()
            while not req.deltas.empty():
                piece = req.deltas.get_nowait()
                if piece:
                    write(piece)
        write(" [...]\n" if req.finish_reason == "length" else "\n")
        self.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": req.text}]
        return req

    def rate(self, rating, better="") -> str:
        """Append the user's rating of the last answer (and the better answer, if given) to the feedback
        file; return what was saved, for the user to see."""
        if not self.turns:
            raise UserError("there is no answer to rate yet; ask something first")
        if better and rating == "up":
            raise UserError("/good takes no text; to give a better answer use /bad followed by it")
        system = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
        record = {"messages": system + self.turns[:-1], "answer": self.turns[-1]["content"], "rating": rating}
        record |= {"better": better} if better else {}
        append_feedback(self.feedback_path, record | {"model": str(self.cfg.ckpt)})
        return f"(saved to {self.feedback_path}: rated {rating}{', with a better answer' if better else ''})"

    def settings(self, args) -> str:
        """Change settings from 'name=value' words (checked as the flags are); return them all."""
        changes = {}
        for word in args:
            name, _, value = word.partition("=")
            if name not in SETTINGS or not value:
                raise UserError(
                    f"cannot read {word!r}; write name=value with name one of {', '.join(SETTINGS)}"
                )
            kind = {f.name: f.type for f in dataclasses.fields(ChatConfig)}[
                name
            ]  # int or float, not the value's type
            try:
                changes[name] = kind(value)
            except ValueError:
                raise UserError(
                    f"{name}={value!r} is not {'an integer' if kind is int else 'a number'}"
                ) from None
        new = dataclasses.replace(self.cfg, **changes)
        check_settings(new)
        self.cfg = new
        return "  ".join(f"{n}={getattr(new, n)}" for n in SETTINGS)


def check_settings(cfg: ChatConfig):
    """The flags' ranges, and no NaN or infinity (which every range comparison lets through)."""
    check_config(cfg)
    for name in SETTINGS:
        value = getattr(cfg, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{name}={value} is not a finite number; see /help for the ranges")


def run_chat(session: ChatSession, read_line, write):
    """The read-answer loop: read_line() gives the user's lines (EOFError ends), write() shows text."""
    write(f"{HELP}\n")
    while True:
        try:
            line = read_line().strip()
        except EOFError:
            write("\n")
            return
        if not line:
            continue
        command, *args = line.split()
        try:
            if command in ("/quit", "/exit"):
                return
            elif command == "/reset":
                session.turns = []
                write("(conversation forgotten)\n")
            elif command == "/settings":
                write(session.settings(args) + "\n")
            elif command in ("/good", "/bad"):
                better = line[len(command) :].strip()
                write(session.rate("up" if command == "/good" else "down", better) + "\n")
            elif command == "/help" or command.startswith("/"):
                write(f"{HELP}\n")
            else:
                write("assistant> ")
                session.reply(line, write)
        except UserError as e:  # a bad setting or too long a message: say so, keep going
            write(f"error: {e}\n")
        except OSError as e:  # the feedback file cannot be written: the conversation goes on
            write(f"error: could not save the rating ({e.strerror}); check --feedback\n")


def write_out(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv=None):
    cfg, _ = parse_config(ChatConfig, argv, doc=__doc__)
    check_settings(cfg)
    model, tok = model_from_flags(cfg, "to talk to")
    session = ChatSession(Engine(model, tok, policy="sequential"), tok, cfg)
    print(
        f"{cfg.ckpt}: {model.num_params(non_embedding=False):,} parameters, context {model.cfg.block_size} tokens"
    )
    run_chat(session, lambda: input("you> "), write_out)


if __name__ == "__main__":
    run_cli(main)
