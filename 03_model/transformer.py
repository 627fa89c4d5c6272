"""The original encoder-decoder Transformer (Vaswani et al. 2017) and three ways to pretrain it.

One backbone, three objectives, each a small function that turns token ids into a loss:

    clm_loss   causal LM (GPT): the decoder alone predicts token t+1 from tokens <= t
    mlm_loss   masked LM (BERT): the encoder alone recovers 15 % of the tokens, of which 80 % were
               replaced by [MASK], 10 % by a random token and 10 % left unchanged
    span_loss  span corruption (T5): spans of the input are cut out and replaced by sentinels; the
               decoder, reading the encoder through cross-attention, writes the missing spans

The layers are the ones of gpt.py with the 2017 switches (sinusoidal positions, post-LN, ReLU
feed-forward, biases): `Attention` and `MLP` are imported, not copied. The encoder's self-attention
is bidirectional, the decoder's is causal, and the decoder's cross-attention takes its keys and
values from the encoder output ("memory").

    python 03_model/transformer.py --data runs/tiny                  # ~20 s per objective
    python 03_model/transformer.py --data runs/tiny --seconds 60 --objectives span

It trains each objective for `--seconds` on runs/<name>/data/train.jsonl (bytes as tokens, or the
stage-02 BPE tokenizer when runs/<name>/tokenizer exists), prints the loss at the start and end of
training and on held-out text, and saves runs/<name>/transformer/{metrics.json,loss.png,manifest.json}
(--overwrite to replace earlier results).
The three losses are not comparable with each other: each predicts a different set of tokens.

Interview questions it answers:
- Encoder-only vs decoder-only vs encoder-decoder: what does each see? (BERT: every token sees the
  whole input, good for understanding, cannot generate left to right; GPT: only the past, generates;
  T5: a bidirectional encoder for the input and a causal decoder for the output, joined by cross-attention)
- Why does BERT not replace every chosen token by [MASK]? ([MASK] never occurs at fine-tuning time;
  keeping 10 % unchanged and 10 % random forces a useful representation of every input token)
- Why does MLM learn more slowly per step than CLM? (only 15 % of the positions give a loss)
- Why span corruption? (a short target: one sentinel + a few tokens per span, so the decoder is cheap,
  and predicting multi-token spans is harder than single masked tokens)
- Why multiply embeddings by sqrt(d)? (with the 2017 init the embedding entries are ~1/sqrt(d); the
  scale brings them to the size of the sinusoidal positions they are added to)
"""

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer"), str(REPO / "kernels")]
from common.devices import set_threads
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.files import pyplot, read_jsonl, save_figure, write_json
from common.layout import RunLayout
from common.runs import check_artifact, claim_output, run_lock, staged_dir, write_manifest
from gpt import MLP, Attention, GPTConfig, LayerNorm  # 03_model (this folder)
from divergence import DivergenceGuard  # 03_model (this folder)
from lm_loss import cross_entropy  # 03_model
from position_encoding import sinusoidal_positions  # 03_model

N_SENTINELS = 16


@dataclass
class TransformerConfig:
    vocab_size: int = 256 + 2 + N_SENTINELS  # bytes + [MASK] + [BOS] + sentinels
    block_size: int = 128
    n_layer: int = 2  # per stack; the paper's base model had 6 encoder + 6 decoder layers
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    attn_backend: str = "auto"

    def layer_config(self) -> GPTConfig:
        """The same layers as gpt.py with the 2017 choices switched on."""
        return GPTConfig(
            vocab_size=self.vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            dropout=self.dropout,
            bias=True,
            pos_emb="sinusoidal",
            norm="layernorm",
            pre_norm=False,
            mlp="relu",
            attn_backend=self.attn_backend,
        )


# ----------------------------------------------------------------------------- the model


class EncoderLayer(nn.Module):
    """x = LN(x + SelfAttn(x));  x = LN(x + FFN(x)).  Bidirectional: every token sees every token."""

    def __init__(self, g: GPTConfig):
        super().__init__()
        self.attn, self.norm1 = Attention(g), LayerNorm(g.n_embd)
        self.ffn, self.norm2 = MLP(g), LayerNorm(g.n_embd)
        self.drop = nn.Dropout(g.dropout)

    def forward(self, x):
        x = self.norm1(x + self.drop(self.attn(x, causal=False)))
        return self.norm2(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    """x = LN(x + CausalSelfAttn(x));  x = LN(x + CrossAttn(x, memory));  x = LN(x + FFN(x)).
    Without memory (decoder-only use, the CLM objective) the cross-attention sublayer is skipped."""

    def __init__(self, g: GPTConfig):
        super().__init__()
        self.self_attn, self.norm1 = Attention(g), LayerNorm(g.n_embd)
        self.cross_attn, self.norm2 = Attention(g), LayerNorm(g.n_embd)
        self.ffn, self.norm3 = MLP(g), LayerNorm(g.n_embd)
        self.drop = nn.Dropout(g.dropout)

    def forward(self, x, memory=None):
        x = self.norm1(x + self.drop(self.self_attn(x, causal=True)))
        if memory is not None:  # queries from the decoder, keys and values from the encoder output
            x = self.norm2(x + self.drop(self.cross_attn(x, context=memory, causal=False)))
        return self.norm3(x + self.drop(self.ffn(x)))


class Transformer(nn.Module):
    """Encoder stack + decoder stack sharing one embedding matrix, which also scores the output
    (the paper, section 3.4: input embeddings of both stacks and the pre-softmax projection are tied)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        g = cfg.layer_config()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.encoder = nn.ModuleList(EncoderLayer(g) for _ in range(cfg.n_layer))
        self.decoder = nn.ModuleList(DecoderLayer(g) for _ in range(cfg.n_layer))
        self.drop = nn.Dropout(cfg.dropout)
        # Xavier-uniform, the usual choice for this model: a LayerNorm after every sublayer rescales the
        # stream, so the GPT-2 trick of shrinking residual projections by 1/sqrt(2·n_layer) is not needed
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.tok_emb.weight, std=cfg.n_embd**-0.5)

    def embed(self, idx):
        """tokens (B, T) -> tok_emb · sqrt(d) + sinusoidal positions (B, T, d)."""
        T = idx.shape[1]
        if T > self.cfg.block_size:
            raise UserError(
                f"sequence of {T} tokens is longer than block_size={self.cfg.block_size}; "
                "crop it or raise --block-size"
            )
        pe = sinusoidal_positions(torch.arange(T, device=idx.device), self.cfg.n_embd)
        return self.drop(self.tok_emb(idx) * math.sqrt(self.cfg.n_embd) + pe)

    def encode(self, src):
        """src (B, S) -> memory (B, S, d)."""
        x = self.embed(src)
        for layer in self.encoder:
            x = layer(x)
        return x

    def decode(self, tgt, memory=None):
        """tgt (B, T), memory (B, S, d) or None -> hidden states (B, T, d)."""
        x = self.embed(tgt)
        for layer in self.decoder:
            x = layer(x, memory)
        return x

    def logits(self, h):
        return h @ self.tok_emb.weight.T  # (B, T, V)

    def forward(self, src, tgt):
        return self.logits(self.decode(tgt, self.encode(src)))


# ----------------------------------------------------------------------------- objectives


def special_ids(base_vocab: int) -> dict:
    """Ids appended after a base vocabulary (256 bytes or a BPE tokenizer): [MASK], [BOS], sentinels."""
    return {
        "mask": base_vocab,
        "bos": base_vocab + 1,
        "sentinels": list(range(base_vocab + 2, base_vocab + 2 + N_SENTINELS)),
        "base": base_vocab,
    }


def clm_loss(model: Transformer, tokens):
    """Causal LM with the decoder alone (a GPT): predict tokens[:, 1:] from tokens[:, :-1]."""
    logits = model.logits(model.decode(tokens[:, :-1]))
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def mlm_inputs(tokens, specials, rate=0.15, generator=None):
    """BERT's corruption. Choose `rate` of the positions; of those 80 % -> [MASK], 10 % -> a random
    token, 10 % unchanged. Returns (inputs, labels) with labels = -100 where nothing is predicted."""
    chosen = torch.rand(tokens.shape, generator=generator) < rate
    labels = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    r = torch.rand(tokens.shape, generator=generator)
    random_tokens = torch.randint(0, specials["base"], tokens.shape, generator=generator)
    inputs = torch.where(chosen & (r < 0.8), torch.full_like(tokens, specials["mask"]), tokens)
    inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_tokens, inputs)
    return inputs, labels


def mlm_loss(model: Transformer, tokens, specials, generator=None):
    """Masked LM with the encoder alone: cross-entropy on the chosen positions only."""
    inputs, labels = mlm_inputs(tokens, specials, generator=generator)
    logits = model.logits(model.encode(inputs))
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))  # -100: not chosen


def random_segmentation(n: int, k: int, generator=None) -> list:
    """k positive lengths summing to n, uniformly over the ways to cut n items into k runs."""
    cuts = (torch.randperm(n - 1, generator=generator)[: k - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, n]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def span_corrupt(row: list, sentinels, noise_density=0.15, mean_span=3.0, generator=None):
    """T5's span corruption of one sequence: n_noise = round(density·L) tokens in n_spans spans that
    alternate with kept runs (kept, noise, kept, noise, ...). Every example of length L gets the same
    source and target lengths, so a batch needs no padding.

        row     a b c d e f g h          (noise: c d, g)
        source  a b <s0> e f <s1> h
        target  <s0> c d <s1> g <s2>     (the last sentinel marks the end)
    """
    L = len(row)
    n_noise = max(1, round(L * noise_density))
    n_spans = max(1, min(round(n_noise / mean_span), len(sentinels) - 1, L - n_noise))
    noise_lens = random_segmentation(n_noise, n_spans, generator)
    keep_lens = random_segmentation(L - n_noise, n_spans, generator)
    source, target, i = [], [], 0
    for s, (keep, noise) in enumerate(zip(keep_lens, noise_lens)):
        source += row[i : i + keep] + [sentinels[s]]
        target += [sentinels[s]] + row[i + keep : i + keep + noise]
        i += keep + noise
    return source, target + [sentinels[n_spans]]


def span_loss(model: Transformer, tokens, specials, generator=None):
    """Encoder reads the corrupted source; decoder, fed [BOS] + target[:-1], predicts the target."""
    pairs = [span_corrupt(row, specials["sentinels"], generator=generator) for row in tokens.tolist()]
    src = torch.tensor([s for s, _ in pairs], device=tokens.device)  # (B, S)
    tgt = torch.tensor([t for _, t in pairs], device=tokens.device)  # (B, T)
    dec_in = torch.cat([torch.full_like(tgt[:, :1], specials["bos"]), tgt[:, :-1]], dim=1)
    logits = model(src, dec_in)
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))


OBJECTIVES = {"clm": lambda m, x, sp, g: clm_loss(m, x), "mlm": mlm_loss, "span": span_loss}


# ----------------------------------------------------------------------------- the demo


@dataclass
class DemoConfig:
    data: str = option("runs/tiny", "run folder runs/<name> holding data/ from 01_data")
    seconds: float = option(20.0, "training time per objective", min=0.1)
    objectives: list[str] = option(["clm", "mlm", "span"], "objectives to train, in order", sep=",")
    tokenizer: str = option(
        "auto", "auto (BPE when runs/<name>/tokenizer exists) | bytes | bpe", choices=("auto", "bytes", "bpe")
    )
    batch_size: int = option(16, "sequences per step", min=1)
    block_size: int = option(128, "tokens per sequence", min=8)
    n_layer: int = option(2, "layers per stack (encoder and decoder)", min=1)
    n_head: int = option(4, "attention heads", min=1)
    n_embd: int = option(128, "model width", min=8)
    lr: float = option(1e-3, "peak learning rate", min=0.0)
    warmup: int = option(50, "linear warmup steps; post-LN diverges without (Xiong et al. 2020)", min=1)
    seed: int = option(0, "random seed")
    threads: int = option(0, "torch CPU threads; 0 = torch's default (1 is faster on a busy machine)", min=0)
    overwrite: bool = option(False, "replace the results already in runs/<name>/transformer")


def check_demo_config(cfg: DemoConfig):
    """Cross-field checks the command line cannot express, as one-line UserErrors."""
    unknown = [n for n in cfg.objectives if n not in OBJECTIVES]
    if unknown or not cfg.objectives:
        raise UserError(
            f"--objectives: unknown {unknown or 'none given'}; choose from {', '.join(OBJECTIVES)}"
        )
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"--n-embd {cfg.n_embd} is not divisible by --n-head {cfg.n_head}")


def load_token_streams(cfg: DemoConfig):
    """(train ids, val ids, base vocab size, tokenizer name): every document encoded, one separator between."""
    run = Path(cfg.data)
    train_path = RunLayout(run).data / "train.jsonl"
    check_artifact(RunLayout(run).data, made_by=RunLayout(run).made_by("data"))
    use_bpe = cfg.tokenizer == "bpe" or (
        cfg.tokenizer == "auto" and (RunLayout(run).tokenizer / "tokenizer.json").is_file()
    )
    if use_bpe:
        from bpe import BPETokenizer  # 02_tokenizer, only when there is one

        check_artifact(RunLayout(run).tokenizer, made_by=RunLayout(run).made_by("tokenizer"))
        tok = BPETokenizer.load(RunLayout(run).tokenizer)
        encode, sep, base = tok.encode_ordinary, [tok.eot_id], tok.vocab_size
    else:
        encode, sep, base = (lambda s: list(s.encode("utf-8"))), [0], 256

    def stream(path):
        ids = []
        for rec in read_jsonl(path):
            ids += encode(rec["text"]) + sep
        return torch.tensor(ids, dtype=torch.long)

    train = stream(train_path)
    val_path = RunLayout(run).data / "val.jsonl"
    if val_path.is_file():
        val = stream(val_path)
    else:  # hold out the last 10 % of the training stream
        train, val = train[: int(0.9 * len(train))], train[int(0.9 * len(train)) :]
    if min(len(train), len(val)) <= cfg.block_size:
        raise UserError(
            f"{train_path}: too little text for --block-size {cfg.block_size}; "
            "lower it or use a bigger corpus"
        )
    return train, val, base, "bpe" if use_bpe else "bytes"


def random_windows(ids, batch_size, length, generator):
    starts = torch.randint(0, len(ids) - length, (batch_size,), generator=generator)
    return torch.stack([ids[s : s + length] for s in starts.tolist()])  # (B, L)


def train_objective(name, cfg: DemoConfig, train, val, specials):
    """Train a fresh Transformer on one objective for cfg.seconds; returns its metrics."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = Transformer(
        TransformerConfig(
            vocab_size=specials["base"] + 2 + N_SENTINELS,
            block_size=cfg.block_size,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    loss_fn = OBJECTIVES[name]
    val_batch = random_windows(val, 32, cfg.block_size, torch.Generator().manual_seed(1))

    @torch.no_grad()
    def val_loss():
        model.eval()
        loss = loss_fn(model, val_batch, specials, torch.Generator().manual_seed(2)).item()
        model.train()
        return loss

    val_before, losses, t0 = val_loss(), [], time.perf_counter()
    guard = DivergenceGuard(lower=f"--lr (now {cfg.lr:g})")
    while time.perf_counter() - t0 < cfg.seconds:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (len(losses) + 1) / cfg.warmup)
        loss = loss_fn(model, random_windows(train, cfg.batch_size, cfg.block_size, g), specials, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        guard.check(len(losses) + 1, loss)
        opt.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    k = max(1, min(10, len(losses) // 4))
    return {
        "objective": name,
        "steps": len(losses),
        "seconds": round(seconds, 1),
        "train_first": sum(losses[:k]) / k,
        "train_last": sum(losses[-k:]) / k,
        "val_before": val_before,
        "val_after": val_loss(),
        "tokens_per_s": round(len(losses) * cfg.batch_size * cfg.block_size / seconds),
        "curve": losses,
    }


def save_plot(path, results):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(r["curve"], label=r["objective"], linewidth=1)
    ax.set(xlabel="step", ylabel="training loss", title="encoder-decoder Transformer: three objectives")
    ax.legend()
    save_figure(fig, path)


def main(argv=None):
    cfg, _ = parse_config(DemoConfig, argv, doc=__doc__)
    check_demo_config(cfg)
    set_threads(cfg.threads)  # pins decoding too (common/devices.py)
    run = Path(cfg.data)
    out = run / "transformer"
    train, val, base, tok_name = load_token_streams(cfg)
    specials = special_ids(base)
    with run_lock(out):
        claim_output(out, cfg.overwrite, remove=False)  # refuse now, not after minutes of training
        print(f"{len(train):,} train / {len(val):,} val tokens ({tok_name}); {cfg.seconds:g} s per objective")
        results = [train_objective(n, cfg, train, val, specials) for n in cfg.objectives]
        print(
            f"\n{'objective':<10}{'steps':>7}{'train loss first -> last':>28}{'val loss before -> after':>28}"
            f"{'tok/s':>9}"
        )
        for r in results:
            print(
                f"{r['objective']:<10}{r['steps']:>7}{r['train_first']:>15.3f} -> {r['train_last']:<9.3f}"
                f"{r['val_before']:>15.3f} -> {r['val_after']:<9.3f}{r['tokens_per_s']:>9}"
            )
        with staged_dir(out) as tmp:  # built beside the old results, swapped in when complete
            write_json(
                tmp / "metrics.json",
                {
                    "config": asdict(cfg),
                    "tokenizer": tok_name,
                    "results": [{k: v for k, v in r.items() if k != "curve"} for r in results],
                },
            )
            save_plot(tmp / "loss.png", results)
            inputs = [RunLayout(run).data] + ([RunLayout(run).tokenizer] if tok_name == "bpe" else [])
            write_manifest(
                tmp,
                stage="03_model/transformer",
                command=command_line(__file__, argv),
                config=asdict(cfg),
                inputs=inputs,
            )
    print(f"\nwrote {out / 'metrics.json'} and {out / 'loss.png'}")


if __name__ == "__main__":
    run_cli(main)
