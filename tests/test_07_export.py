"""Tests for 07_distill_quant/export.py and its library hf_format.py: Hugging Face export and import,
safetensors written by hand, the tokenizer.json, and ONNX (onnx_graph.py, onnx_int8.py). The checks
against transformers / safetensors / onnxruntime skip when those optional packages
(requirements-export.txt) are absent."""

import json

import pytest
import torch

import export
import hf_format as E
from bpe import BPETokenizer
from checkpoint_io import save_checkpoint
from common.cli import UserError
from gpt import GPT, PRESETS, GPTConfig

SIZES = dict(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_embd=32)


def tiny_model(preset: str, **over) -> GPT:
    """A small GPT whose every weight is random (norm gains and biases too), so a wrong mapping shows."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**SIZES, **PRESETS[preset], **over}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def greedy(forward, idx: torch.Tensor, n: int) -> list:
    """n greedy tokens with a full forward each step: `forward(ids) -> logits (B, T, V)`."""
    for _ in range(n):
        idx = torch.cat([idx, forward(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0].tolist()


def export_tiny(tmp_path, preset, **over):
    model = tiny_model(preset, **over)
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, model.cfg.__dict__, model.state_dict())
    info = E.export_hf(ckpt, tmp_path / "hf")
    return model, info


CASES = [("gpt2", {}, "GPT2LMHeadModel"), ("llama", {"n_kv_head": 2}, "LlamaForCausalLM")]


@pytest.mark.parametrize("preset, over, arch", CASES)
def test_import_of_the_export_gives_the_same_logits(tmp_path, preset, over, arch):
    model, info = export_tiny(tmp_path, preset, **over)
    assert info["architecture"] == arch
    back, _ = E.import_hf(tmp_path / "hf", tmp_path / "imported.pt")
    x = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(back(x)[0], model(x)[0], atol=1e-5)
    assert (tmp_path / "imported.pt").is_file()


@pytest.mark.parametrize("preset, over, arch", CASES)
def test_transformers_loads_the_export_with_equal_logits_and_greedy_tokens(tmp_path, preset, over, arch):
    transformers = pytest.importorskip("transformers")
    model, _ = export_tiny(tmp_path, preset, **over)
    hf = getattr(transformers, arch).from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(x).logits
        assert (ours - theirs).abs().max().item() < 1e-4
        prompt = x[:1, :4]
        assert greedy(lambda i: model(i)[0], prompt, 16) == greedy(lambda i: hf(i).logits, prompt, 16)


def test_hand_written_safetensors_reads_back_and_matches_the_library(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).half(), "e": torch.zeros(0)}
    path = tmp_path / "x.safetensors"
    path.write_bytes(E.safetensors_bytes(tensors, {"format": "pt"}))
    back = E.read_safetensors(path)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    (n,) = __import__("struct").unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0  # data starts 8-byte aligned
    st = pytest.importorskip("safetensors.torch")
    lib = st.load_file(str(path))
    assert all(torch.equal(lib[k], v) for k, v in tensors.items())
    path.write_bytes(b"\x05\x00garbage")
    with pytest.raises(UserError, match="safetensors"):
        E.read_safetensors(path)


def test_tokenizer_json_encodes_like_our_bpe(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    text = "Belmo Tarin is a baker who lives in Orvale. She is 42 years old! 你好, 世界 <3\n\n  x"
    tok = BPETokenizer.train([text * 5, "the cat sat on the mat " * 20], vocab_size=300)
    (tmp_path / "tokenizer.json").write_text(json.dumps(E.hf_tokenizer_json(tok)))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for s in [text, "the mat sat on a cat", "Ünïcödé and  spaces\t\ttabs", "a<|endoftext|>b"]:
        ours = tok.encode(s, allowed_special="all") if "<|" in s else tok.encode_ordinary(s)
        assert hf.encode(s, add_special_tokens=False).ids == ours, s
        assert hf.decode(ours, skip_special_tokens=False) == s


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"n_experts": 2}, "MoE"),
        ({"qk_norm": True}, "qk_norm"),
        ({"pre_norm": False}, "post-LN"),
    ],
)
def test_models_no_architecture_matches_are_refused_with_the_reason(over, expected):
    with pytest.raises(UserError, match=expected):
        E.hf_architecture(GPTConfig(**{**SIZES, **PRESETS["llama"], **over}))
    with pytest.raises(UserError, match="neither"):
        E.hf_architecture(GPTConfig(**{**SIZES, "pos_emb": "sinusoidal"}))


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"activation_function": "relu"}, "activation_function"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale"),
    ],
)
def test_gpt2_variants_03_cannot_run_are_refused_not_silently_changed(over, expected):
    config = {"architectures": ["GPT2LMHeadModel"], "n_embd": 8, "n_layer": 1, **over}
    with pytest.raises(UserError, match=expected):
        E.from_hf(config, {})


def random_gpt2_folder(transformers, folder, vocab_size=300):
    """A transformers.GPT2LMHeadModel (gelu_new, as real GPT-2) with random weights, save_pretrained to
    folder: what a learner's downloaded GPT-2 folder holds, at toy size. Weights are drawn wide
    (std 0.3) so that exact GELU and the tanh one give visibly different logits."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    assert config.activation_function == "gelu_new"
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    hf.save_pretrained(folder)  # model.safetensors + config.json
    return hf


def test_a_gpt2_folder_saved_by_transformers_imports_with_equal_logits_and_greedy_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = random_gpt2_folder(transformers, tmp_path / "gpt2")
    ours, cfg = E.import_hf(tmp_path / "gpt2", tmp_path / "imported" / "ckpt.pt")
    assert cfg.mlp == "gelu_tanh" and cfg.pos_emb == "learned" and cfg.norm == "layernorm"
    x = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(x).logits
        assert (ours(x)[0] - theirs).abs().max().item() < 5e-6
        prompt = x[:1, :4]
        assert greedy(lambda i: ours(i)[0], prompt, 16) == greedy(lambda i: hf(i).logits, prompt, 16)
        # the reason for the option: the same weights with exact GELU are another model, off by
        # ~2e-4 here, hundreds of times float32's ~5e-7 between the two implementations
        exact = GPT(GPTConfig(**{**cfg.__dict__, "mlp": "gelu"}))
        exact.load_state_dict(ours.state_dict())
        assert (exact.eval()(x)[0] - theirs).abs().max().item() > 2e-5
    # the saved 03 checkpoint is that model too, and exports back as gelu_new
    back = GPT.from_checkpoint(tmp_path / "imported" / "ckpt.pt").eval()
    with torch.no_grad():
        assert torch.equal(back(x)[0], ours(x)[0])
    E.export_hf(tmp_path / "imported" / "ckpt.pt", tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["activation_function"] == "gelu_new"


GPT2_TOKENIZER = E.REPO.parent / "shared" / "data" / "tokenizer"


@pytest.mark.skipif(not (GPT2_TOKENIZER / "gpt2_vocab.json").is_file(), reason="GPT-2's vocab.json not here")
def test_the_import_brings_gpt2s_tokenizer_beside_the_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    import shutil

    from common.runs import check_artifact

    random_gpt2_folder(transformers, tmp_path / "gpt2", vocab_size=50257)
    shutil.copy(GPT2_TOKENIZER / "gpt2_vocab.json", tmp_path / "gpt2" / "vocab.json")
    shutil.copy(GPT2_TOKENIZER / "gpt2_merges.txt", tmp_path / "gpt2" / "merges.txt")
    E.import_hf(tmp_path / "gpt2", tmp_path / "imported" / "ckpt.pt")
    tok_dir = tmp_path / "imported" / "tokenizer"
    check_artifact(tok_dir, made_by="export.py --import-hf")  # what sample_text.py checks before loading
    tok = BPETokenizer.load(tok_dir)
    # GPT-2's ids of its own example sentence (tiktoken's "gpt2" encoding gives the same)
    assert tok.encode_ordinary("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert tok.eot_id == 50256


def test_onnx_with_kv_cache_gives_the_logits_and_greedy_tokens_of_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx_graph as O

    model = tiny_model("llama", n_kv_head=2)  # RoPE + GQA: the harder of the two for a graph
    session = O.onnx_session(O.export_onnx(model, tmp_path / "model.onnx"))
    prompt = [5, 17, 42, 7, 99]
    k, v = (t.numpy() for t in O.empty_cache(model.cfg))
    logits, new_k, _ = session.run(None, {"idx": torch.tensor([prompt]).numpy(), "past_k": k, "past_v": v})
    with torch.no_grad():
        assert abs(torch.from_numpy(logits[0]) - model(torch.tensor([prompt]))[0][0, -1]).max() < 1e-4
    assert new_k.shape == (2, 1, 2, len(prompt), model.cfg.head_dim)  # the cache grew by the prompt
    assert O.onnx_greedy(session, model.cfg, prompt, 12) == O.eager_greedy(model, prompt, 12)


def test_bad_input_to_the_export_commands_is_one_error_line_exit_2(tmp_path, capsys):
    from common.cli import run_cli

    model = tiny_model("gpt2", pos_emb="sinusoidal")  # matches no HF architecture
    save_checkpoint(tmp_path / "sin.pt", model.cfg.__dict__, model.state_dict())
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"not a safetensors file")
    cases = [
        ([], "exactly one of"),
        (["--out", "x", "--ckpt", "a.pt", "--import-hf", "b"], "exactly one of"),
        (["--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "missing.pt")], "no checkpoint"),
        (["--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "sin.pt")], "neither"),
        (["--out", str(tmp_path / "o.pt"), "--import-hf", str(tmp_path / "nothing")], "missing"),
        (["--out", str(tmp_path / "o.pt"), "--import-hf", str(tmp_path / "hf")], "safetensors"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as e:
            run_cli(export.main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (
            argv,
            err,
        )
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.pt").exists()


def test_onnx_int8_by_dynamic_quantization_stays_close_to_fp32_beside_07s_int8(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx_int8 as B

    model = tiny_model("llama", n_kv_head=2)
    runners = B.contenders(model, tmp_path)
    windows = torch.randint(0, 300, (3, 17), generator=torch.Generator().manual_seed(2))
    rows = B.measure(runners, model.cfg, windows)
    assert set(rows) == set(runners) and rows["pytorch fp32"]["max_abs_logit_diff"] == 0.0
    assert rows["onnxruntime fp32"]["max_abs_logit_diff"] < 1e-4  # the cache path, teacher-forced, is exact
    for name in ("pytorch int8 (07 QuantLinear)", "onnxruntime int8 (quantize_dynamic)"):
        r = rows[name]
        assert 0 < r["max_abs_logit_diff"] < 0.5 and r["top1_agree"] > 0.8 and abs(r["loss_change"]) < 0.05
        assert r["weight_bytes"] < rows[name.replace("int8", "fp32").split(" (")[0]]["weight_bytes"]
