"""Leave the repository: a trained GPT in the Hugging Face format every other tool loads, and back.
The library of export.py (the command) and export_roundtrip.py (the `export` stage).

A checkpoint here is a torch.save dict only this code understands. The ecosystem (transformers,
vLLM, lm-eval-harness, llama.cpp's GGUF converter, ONNX exporters) reads one layout instead:

    out/config.json           {"architectures": ["GPT2LMHeadModel"], "n_embd": ..., ...}
    out/model.safetensors     every tensor under the name that architecture's code expects
    out/generation_config.json, out/tokenizer.json (+ tokenizer_config.json)   when there is a tokenizer

Two of 03's presets match a Hugging Face architecture exactly:

    gpt2  (learned positions, LayerNorm, GELU, biases)   -> GPT2LMHeadModel
    llama (RoPE, RMSNorm, SwiGLU, no biases, GQA)        -> LlamaForCausalLM

The mapping is a renaming plus three real conversions, each a classic interview trap:
  1. GPT-2 stores its linear layers as Conv1D with weight (in, out), the transpose of nn.Linear's
     (out, in), and fuses q, k, v into one c_attn of width 3d.
  2. Llama's RoPE rotates pairs (i, i + hd/2) ("half"); ours defaults to (2i, 2i+1) ("interleaved").
     The same model in the other convention permutes the rows of wq and wk within each head
     (position_encoding.permute_rope_weights): q·k is unchanged because both get the same permutation.
  3. GPT-2's GELU is the tanh approximation (HF's "gelu_new"); 03's `mlp="gelu"` is the exact erf
     form and `mlp="gelu_tanh"` is GPT-2's. The config names the one the model uses ("gelu" or
     "gelu_new"): the two differ by up to ~1e-3 per activation, enough to change a greedy token.

model.safetensors is written here by hand (no library): 8 bytes little-endian header length N, N bytes
of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}}, then the raw little-endian tensor
bytes. Loading it runs no code (unlike a pickle) and can be memory-mapped without copying.

    python 07_distill_quant/export.py --ckpt runs/tiny/pretrain/ckpt.pt --out runs/tiny/hf
    python 07_distill_quant/export.py --import-hf runs/tiny/hf --out runs/tiny/imported/ckpt.pt

Real GPT-2, offline: download once, elsewhere, the files of https://huggingface.co/openai-community/gpt2
(config.json, model.safetensors, vocab.json, merges.txt) into a folder, then

    python 07_distill_quant/export.py --import-hf ~/gpt2 --out runs/gpt2/imported/ckpt.pt
    python 03_model/sample_text.py --ckpt runs/gpt2/imported/ckpt.pt --prompt "Hello, I'm a language model,"

The import turns the weights into 03's GPT (mlp gelu_tanh, learned positions, LayerNorm, biases) and,
when vocab.json and merges.txt are there, GPT-2's tokenizer into 02's BPETokenizer (from_gpt2) saved
beside the checkpoint. tests/test_07_export.py checks the same path on a randomly initialised
transformers.GPT2LMHeadModel saved with save_pretrained: equal logits and greedy tokens.

The test (tests/test_07_export.py) loads the export with transformers, when installed, and checks equal
logits and equal greedy tokens; it also imports the files back into 03's GPT.

Interview questions it answers:
- Why safetensors rather than pickle for published weights? (a pickle can run code when loaded; a
  safetensors file is a JSON header plus raw bytes: safe, memory-mappable, readable from any language)
- Why does the same checkpoint need its RoPE rows permuted for another library? (two conventions pair
  different coordinates; a permutation of q and k rows inside each head maps one onto the other)
- Conv1D vs Linear in GPT-2? (Conv1D computes x @ W + b with W (in, out): transpose when converting)
- What must a config carry for another runtime to rebuild the model? (every size, the norm epsilon,
  the activation, the RoPE base, tied embeddings, the context length; a wrong epsilon or GELU variant
  gives a model that runs and is slightly wrong, which only a logits comparison catches)
"""

import json
import struct
import sys
from dataclasses import asdict
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer"), str(REPO / "03_model"), str(REPO / "kernels")]
from common.cli import UserError
from common.layout import RunLayout
from common.files import atomic_write_bytes, write_json
from common.runs import write_manifest
from checkpoint_io import load_checkpoint, save_checkpoint, tokenizer_dir  # 03_model
from gpt import GPT, GPTConfig, config_from_dict  # 03_model
from position_encoding import permute_rope_weights  # 03_model

# 03's GELU variants <-> GPT-2's config.json names; gelu_pytorch_tanh is the same tanh formula
GPT2_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
HF_GELU_ALIASES = {"gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new"}
# GPT2Config switches that change the attention math away from 03's (their HF defaults)
GPT2_DEFAULT_FLAGS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False}

# safetensors dtype names <-> torch dtypes (the ones a model here can hold)
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


# ----------------------------------------------------------------------------- safetensors by hand


def safetensors_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """The bytes of a .safetensors file holding `tensors` (name -> contiguous CPU tensor)."""
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        raw = (
            t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        )  # little-endian on every host we run on
        header[name] = {
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the spec pads the header so the data starts 8-byte aligned
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def read_safetensors(path) -> dict:
    """name -> tensor from a .safetensors file, with a UserError for a file that is not one."""
    data = Path(path).read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        body = memoryview(data)[8 + n :]
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if begin == end:  # an empty tensor has no bytes (frombuffer refuses an empty buffer)
                out[name] = torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
                continue
            flat = torch.frombuffer(bytearray(body[begin:end]), dtype=torch.uint8)
            out[name] = flat.view(DTYPES[info["dtype"]]).reshape(info["shape"])
    except (struct.error, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise UserError(
            f"{path}: not a readable safetensors file ({type(e).__name__}); re-export it"
        ) from None
    return out


# ----------------------------------------------------------------------------- the two architectures


def hf_architecture(cfg: GPTConfig) -> str:
    """GPT2LMHeadModel or LlamaForCausalLM, or a UserError naming the fields neither architecture has."""
    common = []
    if cfg.n_experts:
        common.append("n_experts > 0 (MoE)")
    if cfg.qk_norm:
        common.append("qk_norm")
    if not cfg.pre_norm:
        common.append("post-LN (pre_norm off)")
    if cfg.head_size or cfg.mlp_hidden and cfg.mlp != "swiglu":
        common.append("pruned head_size/mlp_hidden")
    gpt2 = [
        "pos_emb learned",
        "norm layernorm",
        "mlp gelu or gelu_tanh",
        "bias on",
        "n_kv_head = n_head",
        "tie_weights on",
    ]
    ok_gpt2 = [
        cfg.pos_emb == "learned",
        cfg.norm == "layernorm",
        cfg.mlp in GPT2_ACTIVATION,
        cfg.bias,
        cfg.n_kv_head == cfg.n_head,
        cfg.tie_weights,
    ]
    if not common and all(ok_gpt2):
        return "GPT2LMHeadModel"
    if not common and cfg.pos_emb == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu":
        return "LlamaForCausalLM"
    missing = common + [g for g, ok in zip(gpt2, ok_gpt2) if not ok]
    raise UserError(
        f"this model matches neither GPT2LMHeadModel nor LlamaForCausalLM ({', '.join(missing)}); "
        "export the gpt2 preset (learned/layernorm/gelu/bias) or the llama preset (rope/rmsnorm/swiglu)"
    )


def hf_config(cfg: GPTConfig, arch: str, bos_eos_id: int | None = None) -> dict:
    """config.json for `arch`: the sizes under the names that architecture's code reads."""
    if arch == "GPT2LMHeadModel":
        out = {
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.ffn_hidden,
            "activation_function": GPT2_ACTIVATION[cfg.mlp],  # "gelu" exact erf, "gelu_new" tanh
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "tie_word_embeddings": True,
        }
    else:
        out = {
            "model_type": "llama",
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.block_size,
            "hidden_size": cfg.n_embd,
            "intermediate_size": cfg.ffn_hidden,
            "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head,
            "head_dim": cfg.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta,
            "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias,
            "tie_word_embeddings": cfg.tie_weights,
        }
    # None when there is no tokenizer: each architecture's defaults (GPT-2: 50256) would name a wrong token
    out["bos_token_id"] = out["eos_token_id"] = bos_eos_id
    return {"architectures": [arch], "torch_dtype": "float32", **out}


def gpt2_names(cfg: GPTConfig, state: dict) -> dict:
    """03's GPT state dict -> GPT2LMHeadModel's (Conv1D weights are (in, out): transposed)."""
    out = {
        "transformer.wte.weight": state["tok_emb.weight"],
        "transformer.wpe.weight": state["pos_emb.weight"],
    }
    for i in range(cfg.n_layer):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        qkv_w = torch.cat([state[p + f"attn.w{x}.weight"] for x in "qkv"])  # (3d, d) as nn.Linear
        qkv_b = torch.cat([state[p + f"attn.w{x}.bias"] for x in "qkv"])
        out |= {
            h + "ln_1.weight": state[p + "norm1.weight"],
            h + "ln_1.bias": state[p + "norm1.bias"],
            h + "attn.c_attn.weight": qkv_w.T,  # Conv1D: (d, 3d)
            h + "attn.c_attn.bias": qkv_b,
            h + "attn.c_proj.weight": state[p + "attn.wo.weight"].T,
            h + "attn.c_proj.bias": state[p + "attn.wo.bias"],
            h + "ln_2.weight": state[p + "norm2.weight"],
            h + "ln_2.bias": state[p + "norm2.bias"],
            h + "mlp.c_fc.weight": state[p + "ffn.up.weight"].T,
            h + "mlp.c_fc.bias": state[p + "ffn.up.bias"],
            h + "mlp.c_proj.weight": state[p + "ffn.down.weight"].T,
            h + "mlp.c_proj.bias": state[p + "ffn.down.bias"],
        }
    out |= {"transformer.ln_f.weight": state["norm_f.weight"], "transformer.ln_f.bias": state["norm_f.bias"]}
    return out  # lm_head is tied to wte: HF re-ties it on load


LLAMA_NAMES = {  # ours (inside blocks.i.) -> HF (inside model.layers.i.)
    "norm1.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "attn.wq.bias": "self_attn.q_proj.bias",
    "attn.wk.bias": "self_attn.k_proj.bias",
    "attn.wv.bias": "self_attn.v_proj.bias",
    "attn.wo.bias": "self_attn.o_proj.bias",
    "norm2.weight": "post_attention_layernorm.weight",
    "ffn.gate.weight": "mlp.gate_proj.weight",
    "ffn.up.weight": "mlp.up_proj.weight",
    "ffn.down.weight": "mlp.down_proj.weight",
    "ffn.gate.bias": "mlp.gate_proj.bias",
    "ffn.up.bias": "mlp.up_proj.bias",
    "ffn.down.bias": "mlp.down_proj.bias",
}


def llama_names(cfg: GPTConfig, state: dict) -> dict:
    """03's GPT state dict -> LlamaForCausalLM's, with q/k rows in HF's "half" RoPE order."""
    if cfg.rope_pairs == "interleaved":
        state = permute_rope_weights(state, cfg, to="half")
    out = {"model.embed_tokens.weight": state["tok_emb.weight"], "model.norm.weight": state["norm_f.weight"]}
    for i in range(cfg.n_layer):
        for ours, theirs in LLAMA_NAMES.items():
            if f"blocks.{i}.{ours}" in state:
                out[f"model.layers.{i}.{theirs}"] = state[f"blocks.{i}.{ours}"]
    if not cfg.tie_weights:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def to_hf(cfg: GPTConfig, state: dict) -> tuple[str, dict]:
    """(architecture, HF-named state dict) of a 03 GPT."""
    arch = hf_architecture(cfg)
    names = gpt2_names if arch == "GPT2LMHeadModel" else llama_names
    return arch, {k: v.float().contiguous() for k, v in names(cfg, state).items()}


def from_hf(config: dict, tensors: dict) -> tuple[GPTConfig, dict]:
    """(GPTConfig, 03 state dict) from a GPT2LMHeadModel or LlamaForCausalLM config.json + tensors.
    GPT-2's gelu_new becomes 03's gelu_tanh; an activation or attention variant 03 does not have is
    refused rather than silently different."""
    arch = (config.get("architectures") or [config.get("model_type", "?")])[0]
    t = {k.removeprefix("transformer.") if arch == "GPT2LMHeadModel" else k: v for k, v in tensors.items()}
    if arch == "GPT2LMHeadModel":
        act = config.get("activation_function", "gelu_new")
        mlp = {v: k for k, v in GPT2_ACTIVATION.items()}.get(HF_GELU_ALIASES.get(act, act))
        if mlp is None:
            raise UserError(
                f"activation_function {act!r}: 03's GPT has exact GELU (gelu) and the tanh one "
                "(gelu_new); importing would change the model's outputs"
            )
        odd = [k for k, v in GPT2_DEFAULT_FLAGS.items() if config.get(k, v) != v]
        if odd:
            raise UserError(f"GPT-2 variant with {', '.join(odd)} changed: 03's attention does not do that")
        d, L = config["n_embd"], config["n_layer"]
        cfg = GPTConfig(
            vocab_size=config["vocab_size"], block_size=config["n_positions"], n_layer=L,
            n_head=config["n_head"], n_embd=d, bias=True, pos_emb="learned", norm="layernorm",
            mlp=mlp, norm_eps=config.get("layer_norm_epsilon", 1e-5),
            mlp_hidden=(config.get("n_inner") or 4 * d) if (config.get("n_inner") or 4 * d) != 4 * d else 0,
        )  # fmt: skip
        state = {"tok_emb.weight": t["wte.weight"], "pos_emb.weight": t["wpe.weight"]}
        for i in range(L):
            p, h = f"blocks.{i}.", f"h.{i}."
            q, k, v = t[h + "attn.c_attn.weight"].T.split(d)
            qb, kb, vb = t[h + "attn.c_attn.bias"].split(d)
            state |= {
                p + "norm1.weight": t[h + "ln_1.weight"], p + "norm1.bias": t[h + "ln_1.bias"],
                p + "attn.wq.weight": q, p + "attn.wk.weight": k, p + "attn.wv.weight": v,
                p + "attn.wq.bias": qb, p + "attn.wk.bias": kb, p + "attn.wv.bias": vb,
                p + "attn.wo.weight": t[h + "attn.c_proj.weight"].T, p + "attn.wo.bias": t[h + "attn.c_proj.bias"],
                p + "norm2.weight": t[h + "ln_2.weight"], p + "norm2.bias": t[h + "ln_2.bias"],
                p + "ffn.up.weight": t[h + "mlp.c_fc.weight"].T, p + "ffn.up.bias": t[h + "mlp.c_fc.bias"],
                p + "ffn.down.weight": t[h + "mlp.c_proj.weight"].T, p + "ffn.down.bias": t[h + "mlp.c_proj.bias"],
            }  # fmt: skip
        state |= {"norm_f.weight": t["ln_f.weight"], "norm_f.bias": t["ln_f.bias"]}
        state["lm_head.weight"] = state["tok_emb.weight"]
    elif arch == "LlamaForCausalLM":
        if config.get("hidden_act", "silu") != "silu":
            raise UserError(f"hidden_act {config['hidden_act']!r}: 03's SwiGLU uses silu")
        d, H = config["hidden_size"], config["num_attention_heads"]
        hd = config.get("head_dim") or d // H
        bias = bool(config.get("attention_bias", False))
        cfg = GPTConfig(
            vocab_size=config["vocab_size"], block_size=config["max_position_embeddings"],
            n_layer=config["num_hidden_layers"], n_head=H,
            n_kv_head=config.get("num_key_value_heads") or H, n_embd=d, bias=bias, pos_emb="rope",
            rope_theta=config.get("rope_theta", 10000.0), rope_pairs="half", norm="rmsnorm",
            norm_eps=config.get("rms_norm_eps", 1e-6), mlp="swiglu",
            tie_weights=config.get("tie_word_embeddings", False),
            head_size=hd if hd * H != d else 0, mlp_hidden=config["intermediate_size"],
        )  # fmt: skip
        state = {"tok_emb.weight": t["model.embed_tokens.weight"], "norm_f.weight": t["model.norm.weight"]}
        for i in range(cfg.n_layer):
            for ours, theirs in LLAMA_NAMES.items():
                if f"model.layers.{i}.{theirs}" in t:
                    state[f"blocks.{i}.{ours}"] = t[f"model.layers.{i}.{theirs}"]
        state["lm_head.weight"] = state["tok_emb.weight"] if cfg.tie_weights else t["lm_head.weight"]
    else:
        raise UserError(f"architecture {arch!r}: only GPT2LMHeadModel and LlamaForCausalLM can be imported")
    return cfg, {k: v.float() for k, v in state.items()}


# ----------------------------------------------------------------------------- files


def hf_tokenizer_json(tok) -> dict:
    """tokenizer.json (the `tokenizers` library's format) for 02's byte-level BPE: the same regex
    pre-split, tokens spelled in GPT-2's byte-to-unicode alphabet, merges in training order (rank =
    position, which is how both encoders pick the next merge), special tokens kept whole."""
    # GPT-2's printable alias of each byte: printable Latin-1 bytes stand for themselves, the rest
    # are shifted to 256+ so every token is a visible string
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    alias, extra = {}, 0
    for b in range(256):
        if b in keep:
            alias[b] = chr(b)
        else:
            alias[b] = chr(256 + extra)
            extra += 1

    def spell(bs: bytes) -> str:
        return "".join(alias[b] for b in bs)

    vocab = {spell(bs): i for i, bs in tok.vocab.items()}
    merges = [[spell(tok.vocab[a]), spell(tok.vocab[b])] for a, b in tok.merges]
    return {
        "version": "1.0",
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for s, i in sorted(tok.special_tokens.items(), key=lambda x: x[1])
        ],  # fmt: skip
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }  # fmt: skip


def export_hf(ckpt_path, out_dir) -> dict:
    """Write out_dir/{config.json, model.safetensors, generation_config.json, tokenizer files}."""
    ckpt = load_checkpoint(ckpt_path, made_by=RunLayout(Path(ckpt_path).parent.parent).made_by("pretrain"))
    cfg = config_from_dict(ckpt["config"], source=str(ckpt_path))
    arch, tensors = to_hf(cfg, ckpt["model"])
    tok_dir = tokenizer_dir(ckpt_path, ckpt.get("tokenizer"))
    tok = None
    if tok_dir is not None and (tok_dir / "tokenizer.json").is_file():
        from bpe import BPETokenizer  # 02_tokenizer

        tok = BPETokenizer.load(tok_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eot = tok.eot_id if tok is not None else None
    write_json(out / "config.json", hf_config(cfg, arch, eot))
    atomic_write_bytes(out / "model.safetensors", safetensors_bytes(tensors, {"format": "pt"}))
    write_json(out / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot} if eot else {})
    if tok is not None:
        write_json(out / "tokenizer.json", hf_tokenizer_json(tok))
        write_json(
            out / "tokenizer_config.json",
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
             "bos_token": "<|endoftext|>", "model_max_length": cfg.block_size},
        )  # fmt: skip
    return {"architecture": arch, "tensors": len(tensors), "tokenizer": tok is not None, "out": str(out)}


def import_hf(hf_dir, out_ckpt=None) -> tuple[GPT, GPTConfig]:
    """03's GPT from a Hugging Face folder (config.json + model.safetensors); saved as a 03 checkpoint
    when out_ckpt is given, with GPT-2's tokenizer beside it when the folder has vocab.json + merges.txt."""
    hf_dir = Path(hf_dir)
    for name in ("config.json", "model.safetensors"):
        if not (hf_dir / name).is_file():
            raise UserError(
                f"{hf_dir / name}: missing; --import-hf takes a folder with config.json and model.safetensors"
            )
    cfg, state = from_hf(
        json.loads((hf_dir / "config.json").read_text()), read_safetensors(hf_dir / "model.safetensors")
    )
    model = GPT(cfg)
    model.load_state_dict(state)
    if out_ckpt is not None:
        Path(out_ckpt).parent.mkdir(parents=True, exist_ok=True)
        tok = import_gpt2_tokenizer(hf_dir, Path(out_ckpt).parent / "tokenizer")
        extra = {"tokenizer": "tokenizer"} if tok else {}  # relative to the checkpoint's folder
        save_checkpoint(out_ckpt, asdict(cfg), model.state_dict(), **extra)
    return model.eval(), cfg


def import_gpt2_tokenizer(hf_dir: Path, out_dir: Path) -> bool:
    """GPT-2's vocab.json + merges.txt as 02's BPETokenizer in out_dir (with a manifest, so 03's
    sample_text.py accepts it); False when the folder has no such files."""
    vocab, merges = hf_dir / "vocab.json", hf_dir / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        return False
    from bpe import BPETokenizer  # 02_tokenizer

    BPETokenizer.from_gpt2(vocab, merges).save(out_dir)
    write_manifest(
        out_dir,
        stage="07_distill_quant",
        command=f"python 07_distill_quant/export.py --import-hf {hf_dir}",
        config={"from": "GPT-2 vocab.json + merges.txt"},
        inputs=[vocab, merges],
    )
    return True
