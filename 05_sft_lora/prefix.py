"""Prefix tuning: P trainable "virtual tokens" per layer that every real token can attend to.

Each layer l gets P key vectors and P value vectors (per key/value head) that sit in front of the
sequence's own keys and values. Nothing else changes: no token is added to the input, positions and
the KV cache are those of the real tokens, and the frozen base model sees different context.

    attention at layer l:  softmax(q · [K_prefix,l ; K]ᵀ / sqrt(hd)) · [V_prefix,l ; V]

Reparametrization (Li & Liang 2021, §4.3): optimizing the prefixes directly is unstable, so during
training they are produced by a small MLP from a P × d embedding E:

    prefix = MLP(E) = W₂ tanh(W₁ E + b₁) + b₂       E (P, d) -> (P, L·2·Hkv·hd) -> (L, 2, Hkv, P, hd)

After training `fold()` evaluates the MLP once and keeps only its output as plain parameters
(L·2·Hkv·P·hd numbers, what gets saved); the MLP and E are dropped.

How it reaches the model: 03_model's Attention has one hook, `kv_prefix(k, v, allowed)`, called
after the KV cache. `attach_prefix` points every layer's hook at this module; `detach_prefix`
sets them back to None, which is the base model bit for bit (tested).
- Without an explicit mask (training), attention is causal *bottom-right aligned* (query i sees keys
  j <= i + S - T, kernels/attention_backends.py): with S = P + T every query sees all P prefixes and
  the usual causal part, so the fused kernel needs no mask at all.
- With a mask (padding, the KV cache, packed examples) P always-visible columns are put in front.
- Generation with a KV cache: prefixes are not cached (the hook runs after `cache.update`), they are
  prepended again at every step, so cache positions and masks stay those of real tokens.

The chat markers (`token_ids`, `marker_ids(tok)`): why prefix tuning alone never learned to stop.
The markers <|user|>, <|assistant|>, <|end|> are special ids that a base pretrained on plain text
has never seen, as input or as target. Their rows of the (tied) embedding got only the softmax's
push-down gradient, so <|end|>'s row points away from every hidden state the model makes: on the
tiny base its loss as a target is 16 nats (content tokens: 9), and after 60 steps of prefix tuning
still 6.4 while the answers' loss had fallen to 1.7 (measured; README). A prefix can only add
attention values; it cannot give a never-seen marker a usable input vector or an output direction.
LoRA and adapters change the matrices that write into the residual stream (wo, down) and learn it
anyway. The fix practitioners use when a chat template adds tokens (PEFT's trainable_token_indices,
training the new rows of embed_tokens/lm_head) is taken here: the rows of those few ids train too,
as deltas on their input embedding and output row (2·n·d numbers, 1,024 for 4 markers at d = 128):

    embedding(i) = E[i] + δ_in[i]          logit_i = h · (E_out[i] + δ_out[i])     for i in token_ids

With them <|end|>'s loss falls to 0.002 in 40 steps and every answer stops (tests/test_05_sft_lora.py).

    from prefix import PrefixTuning, attach_prefix, marker_ids
    prefix = PrefixTuning(model.cfg, n_prefix=8, hidden=128, token_ids=marker_ids(tok))
    attach_prefix(model, prefix)

Interview questions it answers:
- Prefix tuning vs prompt tuning? (prompt tuning learns input embeddings only, at layer 0; prefix
  tuning learns keys/values at every layer, so it can steer deeper layers directly)
- Why reparametrize through an MLP? (direct optimization of the prefixes is sensitive to the learning
  rate and init; the MLP couples the P positions and smooths the optimization; it is folded away)
- Why can a PEFT method fail to emit the end token? (the end token is new to the base: its
  embedding row was only ever pushed down, and the method has no parameter that moves the final
  hidden state far enough toward it; train the new tokens' rows, as HF PEFT's trainable_token_indices)
- What does a prefix cost at inference? (P more keys per layer: attention over P + T keys, and
  L·2·Hkv·P·hd stored numbers; no change to the weights)
"""

import functools
import sys
from pathlib import Path

import torch
import torch.nn as nn

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from chat_template import END, ROLE_TOKEN  # 05_sft_lora (this folder)
from lora import load_peft, save_peft  # 05_sft_lora (this folder): the shared adapter-file format


def marker_ids(tok) -> list:
    """Ids of the chat template's markers (<|system|>, <|user|>, <|assistant|>, <|end|>) that `tok` has."""
    return [tok.special_tokens[m] for m in (*ROLE_TOKEN.values(), END) if m in tok.special_tokens]


class PrefixTuning(nn.Module):
    """Per-layer key/value prefixes, (L, 2, Hkv, P, hd), through a reparametrizing MLP until `fold()`."""

    def __init__(self, cfg, n_prefix=8, hidden=128, token_ids=()):
        super().__init__()
        if n_prefix < 1 or hidden < 1:
            raise UserError(f"prefix length ({n_prefix}) and MLP width ({hidden}) must be >= 1")
        bad = [i for i in token_ids if not 0 <= i < cfg.vocab_size]
        if bad:
            raise UserError(f"token ids {bad} are outside the model's vocabulary of {cfg.vocab_size}")
        # the trainable rows of the chat markers (module docstring): zero deltas, so the base at init
        self.register_buffer("token_ids", torch.tensor(sorted(set(token_ids)), dtype=torch.long))
        self.token_in = nn.Parameter(torch.zeros(len(self.token_ids), cfg.n_embd))  # δ_in (n, d)
        self.token_out = nn.Parameter(torch.zeros(len(self.token_ids), cfg.n_embd))  # δ_out (n, d)
        self.handles = []
        self.shape = (n_prefix, cfg.n_layer, 2, cfg.n_kv_head, cfg.head_dim)
        self.embedding = nn.Parameter(torch.randn(n_prefix, cfg.n_embd) * 0.02)  # E, like a token embedding
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, hidden),
            nn.Tanh(),
            nn.Linear(hidden, cfg.n_layer * 2 * cfg.n_kv_head * cfg.head_dim),
        )
        self.folded = None  # (L, 2, Hkv, P, hd) after fold()

    @property
    def n_prefix(self) -> int:
        return self.shape[0]

    def prefixes(self) -> torch.Tensor:
        """All layers' keys and values, (L, 2, Hkv, P, hd)."""
        if self.folded is not None:
            return self.folded
        return self.mlp(self.embedding).view(self.shape).permute(1, 2, 3, 0, 4)

    @torch.no_grad()
    def fold(self):
        """Replace the MLP by its output: from now on the prefixes are plain trainable tensors."""
        if self.folded is None:
            self.folded = nn.Parameter(self.prefixes().detach().clone().contiguous())
            del self.mlp, self.embedding

    def extend(self, layer, k, v, allowed):
        """The Attention hook: prepend layer `layer`'s prefixes to k, v (B, Hkv, S, hd) and P
        always-visible columns to the mask `allowed` (B, 1, T, S) when there is one.
        (Training recomputes the small MLP here for each layer; after fold() it is a lookup.)"""
        B = k.shape[0]
        pk, pv = self.prefixes()[layer].to(k.dtype)  # (Hkv, P, hd) each
        k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)  # (B, Hkv, P+S, hd)
        v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
        if allowed is not None:
            seen = allowed.new_ones(*allowed.shape[:-1], self.n_prefix)  # (B, 1, T, P)
            allowed = torch.cat([seen, allowed], dim=-1)
        return k, v, allowed

    def embed_hook(self, module, inputs, out):
        """Forward hook on tok_emb: out (B, T, d) + δ_in of the marker at each position, 0 elsewhere."""
        onehot = (inputs[0].unsqueeze(-1) == self.token_ids).to(out.dtype)  # (B, T, n)
        return out + onehot @ self.token_in.to(out.dtype)

    def logits_hook(self, module, inputs, logits):
        """Forward hook on lm_head: logits (B, T, V), the markers' columns + h · δ_outᵀ."""
        add = inputs[0] @ self.token_out.to(inputs[0].dtype).t()  # (B, T, n)
        return logits.index_add(-1, self.token_ids, add.to(logits.dtype))


def attach_prefix(model, prefix: PrefixTuning):
    """Point every layer's attention hook at `prefix`, hook the marker rows into the embedding and the
    output layer, and freeze the base model. The prefix module stays outside the model, so the
    model's state dict is still exactly the base's."""
    if prefix.handles:
        raise UserError("this prefix is already attached; detach_prefix(model, prefix) first")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer, block in enumerate(model.blocks):
        block.attn.kv_prefix = functools.partial(prefix.extend, layer)
    if len(prefix.token_ids):
        prefix.handles = [
            model.tok_emb.register_forward_hook(prefix.embed_hook),
            model.lm_head.register_forward_hook(prefix.logits_hook),
        ]


def detach_prefix(model, prefix: PrefixTuning = None):
    """The base model again, bit for bit: no attention hook, and `prefix`'s marker hooks removed."""
    for block in model.blocks:
        block.attn.kv_prefix = None
    for h in prefix.handles if prefix is not None else []:
        h.remove()
    if prefix is not None:
        prefix.handles = []


def save_prefix(prefix: PrefixTuning, model, path):
    """Fold (if not yet) and save the plain prefixes (L·2·Hkv·P·hd numbers) and the marker rows."""
    prefix.fold()
    state = {"prefixes": prefix.folded, "token_ids": prefix.token_ids}
    state |= {"token_in": prefix.token_in, "token_out": prefix.token_out}
    save_peft(path, model, "prefix", state, n_prefix=prefix.n_prefix)


def load_prefix(model, path) -> PrefixTuning:
    """A folded PrefixTuning from `path`, checked against `model`'s config and attached to it."""
    state, meta = load_peft(path, model, "prefix")
    ids = state["token_ids"].tolist() if "token_ids" in state else []  # files from before the markers
    prefix = PrefixTuning(model.cfg, meta["n_prefix"], hidden=1, token_ids=ids)
    prefix.fold()
    with torch.no_grad():
        prefix.folded.copy_(state["prefixes"])
        if ids:
            prefix.token_in.copy_(state["token_in"])
            prefix.token_out.copy_(state["token_out"])
    attach_prefix(model, prefix.to(next(model.parameters()).device))
    return prefix
