"""Sample text from a trained GPT checkpoint: the command line of decoding.generate and decoding.generate_beam.

    python 03_model/sample_text.py --ckpt runs/tiny/pretrain/ckpt.pt --prompt "Once upon a time"
    python 03_model/sample_text.py --ckpt runs/tiny/pretrain/ckpt.pt --prompt "The cat" "A dog" --temperature 0
    python 03_model/sample_text.py --ckpt runs/tiny/pretrain/ckpt.pt --beam-width 4 --max-new-tokens 20

Several prompts make one left-padded batch. Each prompt starts after <|endoftext|>, as every document
did in the pretraining stream, and a row stops at the next <|endoftext|>. The tokenizer is the one
the checkpoint names (a path relative to the checkpoint's folder, e.g. "../tokenizer"; older
checkpoints hold an absolute one), else runs/<name>/tokenizer beside pretrain/, or --tokenizer.
Prints each prompt with its continuation (and, for beam search, the sequence's log-probability).

Interview questions it answers:
- Why start the prompt with <|endoftext|>? (the model only ever saw documents begin after it, so
  without it the prompt looks like the middle of some other document)
- What do temperature, top-k, top-p and the repetition penalty each change? (decoding.py)
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer")]
from common.cli import UserError, option, parse_config, run_cli
from common.layout import RunLayout
from common.runs import check_artifact
from common.devices import resolve_device
from checkpoint_io import load_checkpoint, tokenizer_dir  # 03_model (this folder)
from decoding import generate, generate_beam, left_pad  # 03_model
from gpt import GPT  # 03_model


@dataclass
class SampleConfig:
    ckpt: str = option("", "checkpoint to sample from, e.g. runs/tiny/pretrain/ckpt.pt")
    tokenizer: str = option("", "tokenizer folder; empty = the one the checkpoint names")
    prompt: list[str] = option(["Once upon a time"], "prompt text; several make a left-padded batch")
    max_new_tokens: int = option(64, "tokens to generate per prompt (cut to the model's context)", min=1)
    temperature: float = option(0.8, "softmax temperature; 0 = greedy", min=0.0)
    top_k: int = option(0, "sample among the k most likely tokens only; 0 = off", min=0)
    top_p: float = option(
        0.95, "nucleus: the smallest set of tokens with this much mass; 1 = off", min=1e-6, max=1.0
    )
    repetition_penalty: float = option(
        1.1, "divide positive logits of tokens already present by this", min=1e-6
    )
    beam_width: int = option(0, "beam search with this many beams instead of sampling; 0 = sample", min=0)
    seed: int = option(0, "random seed of the sampler")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")


def load_tokenizer(ckpt_path: Path, saved, override: str):
    """The tokenizer of --tokenizer, else of the checkpoint's "tokenizer" entry, else runs/<name>/tokenizer."""
    from bpe import BPETokenizer  # 02_tokenizer

    named = tokenizer_dir(ckpt_path, saved)
    candidates = (
        [Path(override)]
        if override
        else [p for p in (named, RunLayout(ckpt_path.parent.parent).tokenizer) if p]
    )
    for folder in candidates:
        if (folder / "tokenizer.json").is_file():
            check_artifact(folder, made_by=RunLayout(folder.parent).made_by("tokenizer"))
            return BPETokenizer.load(folder)
    raise UserError(
        f"no tokenizer found (looked in {', '.join(map(str, candidates))}); "
        "pass --tokenizer runs/<name>/tokenizer"
    )


def main(argv=None):
    cfg, _ = parse_config(SampleConfig, argv, doc=__doc__)
    if not cfg.ckpt:
        raise UserError("--ckpt is required: the checkpoint to sample from, e.g. runs/tiny/pretrain/ckpt.pt")
    device = resolve_device(cfg.device)
    ckpt_path = Path(cfg.ckpt)
    made_by = f"python 04_pretrain/pretrain.py --data {ckpt_path.parent.parent}"
    ckpt = load_checkpoint(ckpt_path, map_location=device, made_by=made_by)
    model = GPT.from_checkpoint(ckpt_path, map_location=device, ckpt=ckpt).eval()
    tok = load_tokenizer(ckpt_path, ckpt.get("tokenizer"), cfg.tokenizer)
    if tok.vocab_size > model.cfg.vocab_size:
        raise UserError(
            f"tokenizer has {tok.vocab_size} tokens but the model only {model.cfg.vocab_size}; "
            "pass the tokenizer the model was trained with"
        )
    prompts = [[tok.eot_id] + tok.encode(s) for s in cfg.prompt]
    longest = max(map(len, prompts))
    if longest >= model.cfg.block_size:
        raise UserError(
            f"the longest prompt is {longest} tokens but the model's context is "
            f"{model.cfg.block_size}; shorten it"
        )
    max_new = min(cfg.max_new_tokens, model.cfg.block_size - longest)
    torch.manual_seed(cfg.seed)
    if cfg.beam_width:
        for text, ids in zip(cfg.prompt, prompts):
            out, logprob = generate_beam(
                model, torch.tensor([ids], device=device), max_new, cfg.beam_width, stop_tokens=[tok.eot_id]
            )
            print(
                f"--- {text!r} (beam search, log-probability {logprob:.2f})\n"
                f"{text}{decode_continuation(tok, out[0, len(ids) :].tolist())}"
            )
        return
    idx, mask = left_pad(prompts, pad_id=tok.special_tokens.get("<|pad|>", tok.eot_id), device=device)
    out = generate(
        model,
        idx,
        max_new,
        temperature=cfg.temperature,
        top_k=cfg.top_k or None,
        top_p=cfg.top_p,
        repetition_penalty=cfg.repetition_penalty,
        stop_tokens=[tok.eot_id],
        attention_mask=mask,
        pad_id=tok.eot_id,
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
    )
    for text, row in zip(cfg.prompt, out[:, idx.shape[1] :].tolist()):
        print(f"--- {text!r}\n{text}{decode_continuation(tok, row)}")


def decode_continuation(tok, ids) -> str:
    """The generated tokens up to (not including) the first <|endoftext|>, as text."""
    return tok.decode(ids[: ids.index(tok.eot_id)] if tok.eot_id in ids else ids)


if __name__ == "__main__":
    run_cli(main)
