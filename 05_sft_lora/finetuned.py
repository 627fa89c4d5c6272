"""A finished SFT run as a library: load the fine-tuned model, generate its answers, score them.

sft.py trains; this file is what 06 and 07 (and sft.py itself) use afterwards, so no stage imports a
command script for its functions:

    from finetuned import generate_answers, load_finetuned, score
    model, tok, peft = load_finetuned("runs/tiny/sft")
    answers = generate_answers(model, tok, conversations, max_new_tokens=48, device="cpu")
    score(answers, conversations)      # {"exact_match", "token_f1", "answer_acc", "n"}

`corpus_loss` (the forgetting metric, 07's loss of a compressed model) is 04's one held-out loss
(heldout_loss.py), passed on from here.

Experiments that train several SFT models (compare.py, knowledge_update.py) run sft.py itself, each in
its own process, through `run_sft(args, log, what)`: one place that starts it and turns its failure
into one line.

Several LoRA adapters on one base, switched per request (multi_adapter.py measures it):

    model, tok = load_named_adapters({"facts": "runs/x/facts", "arithmetic": "runs/x/arithmetic"})
    answer_requests(model, tok, [("facts", conv1), ("arithmetic", conv2), ({"facts": .5, "arithmetic": .5}, conv3)])

Interview questions it answers:
- How do you serve many fine-tunes of one model? (one base in memory, a named adapter per task or
  customer, kilobytes each; each request names its adapter and is batched with requests for the same
  one: S-LoRA / vLLM's multi-LoRA serving; `answer_requests` does it one group at a time)
- How is a PEFT model shipped? (the base checkpoint once, plus kilobytes of adapter weights per task;
  loading attaches the adapter to the base, or merges it for serving: lora.merge_lora)
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer"), str(REPO / "03_model"), str(REPO / "04_pretrain")]
from common.cli import UserError
from common.files import read_json
from common.layout import RunLayout
from common.runs import check_artifact
from bpe import BPETokenizer  # 02_tokenizer
from checkpoint_io import load_checkpoint  # 03_model
from decoding import generate, left_pad  # 03_model
from gpt import GPT  # 03_model

# the one held-out loss (04): SFT's forgetting and 07's compressed models import it from here too
from heldout_loss import corpus_loss as corpus_loss  # 04_pretrain

from adapter import load_adapters
from chat_template import END, decode_answer, encode_prompt
from lora import load_lora, set_adapter
from metrics import answer_in, corpus_bleu, exact_match, rouge_l, token_f1
from sft_baselines import answer_span
from prefix import load_prefix


def load_finetuned(sft_dir, device="cpu"):
    """(model, tokenizer, peft) of a finished sft.py run: the full checkpoint (peft None), or the base
    with its adapter attached (peft: the LoRA adapter's name, or the PrefixTuning / BottleneckAdapters
    module, which lives beside the model). What 06 and 07 call to start from the SFT model."""
    sft_dir = Path(sft_dir)
    manifest = check_artifact(sft_dir, made_by=RunLayout("runs/<name>").made_by("sft"))
    outcome = read_json(sft_dir / "outcome.json")
    tok = BPETokenizer.load(sft_dir / outcome["tokenizer"])
    if (sft_dir / "ckpt.pt").is_file():
        return GPT.from_checkpoint(sft_dir / "ckpt.pt", map_location=device), tok, None
    model = GPT.from_checkpoint(sft_dir / outcome["base_checkpoint"], map_location=device)
    kind = load_checkpoint(sft_dir / "adapter.pt").get("peft", {}).get("kind")
    loader = {"lora": load_lora, "prefix": load_prefix, "adapter": load_adapters}.get(kind)
    if loader is None:
        raise UserError(f"{sft_dir}/adapter.pt: unknown adapter kind {kind!r}; rerun `{manifest['command']}`")
    return model, tok, loader(model, sft_dir / "adapter.pt")


def load_named_adapters(sft_dirs: dict, device="cpu"):
    """(model, tokenizer): the base that every run in {name: sft_dir} was trained on, with each run's
    LoRA adapter loaded under its name (none active until a request names one). Refuses runs that are
    not LoRA or were trained on different base checkpoints (a LoRA update means nothing on another base)."""
    if not sft_dirs:
        raise UserError("name at least one adapter: {name: sft run folder}")
    bases = {}
    for name, d in sft_dirs.items():
        d = Path(d)
        check_artifact(d, made_by=RunLayout("runs/<name>").made_by("sft"))
        if (
            not (d / "adapter.pt").is_file()
            or load_checkpoint(d / "adapter.pt").get("peft", {}).get("kind") != "lora"
        ):
            raise UserError(f"{d}: not a LoRA run (no LoRA adapter.pt); train it with sft.py --method lora")
        bases[name] = (d / read_json(d / "outcome.json")["base_checkpoint"]).resolve()
    if len(set(bases.values())) > 1:
        raise UserError(
            "the adapters were trained on different bases ("
            + ", ".join(f"{n}: {b}" for n, b in bases.items())
            + "); train every adapter on the same base checkpoint"
        )
    first = Path(next(iter(sft_dirs.values())))
    tok = BPETokenizer.load(first / read_json(first / "outcome.json")["tokenizer"])
    model = GPT.from_checkpoint(next(iter(bases.values())), map_location=device)
    for name, d in sft_dirs.items():
        load_lora(model, Path(d) / "adapter.pt", name=name)
    set_adapter(model, {})
    model.eval()
    return model, tok


def answer_requests(model, tok, requests, max_new_tokens=32, device="cpu") -> list:
    """Greedy answers to [(adapter, conversation)], in order. `adapter`: a name, a weighted combination
    {name: weight} (ΔW = Σ w_a ΔW_a) or {} for the base alone. Requests for the same adapter are batched
    together, the adapter switched between groups (lora.set_adapter: no copy of any weight)."""
    groups = {}
    for i, (adapter, _) in enumerate(requests):
        key = adapter if isinstance(adapter, str) else tuple(sorted(dict(adapter).items()))
        groups.setdefault(key, []).append(i)
    answers = [None] * len(requests)
    for key, idx in groups.items():
        set_adapter(model, key if isinstance(key, str) else dict(key))
        for i, a in zip(
            idx, generate_answers(model, tok, [requests[i][1] for i in idx], max_new_tokens, device)
        ):
            answers[i] = a
    set_adapter(model, {})
    return answers


@torch.no_grad()
def generate_answers(model, tok, conversations, max_new_tokens, device, batch=64) -> list:
    """Greedy answers (03's decoding.generate, KV cache, left-padded batches) to each conversation's
    last user turn, prompted with the chat template; generation stops at <|end|>."""
    end, pad = tok.special_tokens[END], tok.special_tokens.get("<|pad|>", tok.eot_id)
    out = []
    for i in range(0, len(conversations), batch):
        prompts = [encode_prompt(tok, c) for c in conversations[i : i + batch]]
        idx, mask = left_pad(prompts, pad_id=pad, device=device)
        room = min(max_new_tokens, model.cfg.block_size - idx.shape[1])
        if room < 1:
            raise UserError(
                f"a held-out prompt fills the model's context ({idx.shape[1]} tokens); "
                "drop long conversations from the held-out file"
            )
        gen = generate(
            model, idx, room, temperature=0, stop_tokens=[end, tok.eot_id], attention_mask=mask, pad_id=pad
        )
        out += [decode_answer(tok, row) for row in gen[:, idx.shape[1] :].tolist()]
    return out


def score(predictions, records) -> dict:
    """Mean exact match and token F1 (SQuAD v1.1), corpus BLEU (sacrebleu's defaults) and mean ROUGE-L
    (rouge-score's) against the reference answer turn, and answer accuracy (the short answer), each of
    the answer's span (sft_baselines.answer_span: up to the first newline or chat marker)."""
    predictions = [answer_span(p) for p in predictions]
    refs = [r["messages"][-1]["content"] for r in records]
    shorts = [r.get("answer") for r in records]
    res = {
        "exact_match": float(np.mean([exact_match(p, r) for p, r in zip(predictions, refs)])),
        "token_f1": float(np.mean([token_f1(p, r) for p, r in zip(predictions, refs)])),
        "bleu": corpus_bleu(predictions, refs)["bleu"],  # sacrebleu's default corpus BLEU, 0-100
        "rouge_l": float(np.mean([rouge_l(p, r) for p, r in zip(predictions, refs)])),
        "n": len(records),
    }
    if all(isinstance(s, str) for s in shorts):
        res["answer_acc"] = float(np.mean([answer_in(p, s) for p, s in zip(predictions, shorts)]))
    return res


def run_sft(args: list, log=None, what="a run") -> None:
    """05's sft.py with `args` in a fresh process (it is a command, never imported); its output goes to
    the file `log`, or to this process's stdout. A failure is one UserError carrying sft.py's own last
    error line, naming `what` failed (and the log, where there is one)."""
    cmd = [sys.executable, str(Path(__file__).with_name("sft.py")), *map(str, args)]
    with open(log, "w") if log else open(sys.stdout.fileno(), "w", closefd=False) as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        where = f" (log: {log})" if log else ""
        raise UserError(f"sft.py for {what} failed: {last.removeprefix('error: ')}{where}")
