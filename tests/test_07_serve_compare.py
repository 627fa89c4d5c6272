"""07_distill_quant serving of several checkpoints at once (serve.py --compare): each model its own
engine, the request's `model` field picks one, /v1/models lists them all, /metrics sums their load,
and the chat page's compare mode asks every model one question and shows the answers side by side.

Untrained models with large random weights, as in test_07_serve.py: two different seeds give two
different greedy answers, so an answer from the wrong model shows.
"""

import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
for sub in ("", "02_tokenizer", "03_model", "05_sft_lora", "07_distill_quant"):
    sys.path.insert(0, str(REPO / sub))

from batching import Engine  # noqa: E402
from bpe import BPETokenizer  # noqa: E402
from chat_template import encode_prompt  # noqa: E402
from checkpoint_io import save_checkpoint  # noqa: E402
from common.cli import UserError  # noqa: E402
from common.runs import write_manifest  # noqa: E402
from decoding import generate  # noqa: E402
from gpt import GPT, GPTConfig  # noqa: E402
import serve  # noqa: E402
from serve import ChatServer  # noqa: E402


def model_of(tok, seed):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def tok():
    text = "Where does Noin Marora live? She lives in Pelk. What is two plus two? Four." * 3
    return BPETokenizer.train([text], vocab_size=300)


@pytest.fixture(scope="module")
def two_models(tok):
    """A server of 'base' (the default) and 'sft', two models of different weights."""
    models = {"base": model_of(tok, 1), "sft": model_of(tok, 2)}
    engines = {
        k: Engine(m, tok, "continuous", max_batch=4, max_waiting=16, prefix_blocks=8)
        for k, m in models.items()
    }
    srv = ChatServer(
        ("127.0.0.1", 0),
        engines["base"],
        tok,
        "base",
        default_max_tokens=6,
        log_requests=False,
        more={"sft": (engines["sft"], tok)},
    )
    for e in engines.values():
        e.start()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, models
    srv.shutdown()
    srv.server_close()
    for e in engines.values():
        e.stop()


def call(srv, path, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{srv.server_address[1]}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if r.headers["Content-Type"].startswith(
                "application/json"
            ) else text
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


QUESTION = [{"role": "user", "content": "Where does Noin Marora live?"}]


def greedy_answer(model, tok, n=6):
    """What 03's generate says to the chat prompt alone, greedy, cut at the first special token."""
    ids = encode_prompt(tok, QUESTION)
    out = generate(model, torch.tensor([ids]), n, temperature=0)[0, len(ids) :].tolist()
    stops = set(tok.special_tokens.values())
    cut = next((i for i, t in enumerate(out) if t in stops), len(out))
    return tok.decode(out[:cut])


def test_the_model_field_picks_the_model_that_answers(two_models, tok):
    srv, models = two_models
    status, listed = call(srv, "/v1/models")
    assert status == 200 and [m["id"] for m in listed["data"]] == ["base", "sft"]  # the default first
    answers = {}
    for name in ("base", "sft", None):
        body = {"messages": QUESTION, "temperature": 0, "max_tokens": 6} | ({"model": name} if name else {})
        status, reply = call(srv, "/v1/chat/completions", body)
        assert status == 200 and reply["model"] == (name or "base")
        answers[name] = reply["choices"][0]["message"]["content"]
    assert answers["base"] == greedy_answer(models["base"], tok) == answers[None]
    assert answers["sft"] == greedy_answer(models["sft"], tok)
    assert answers["base"] != answers["sft"]  # else this test could not tell the models apart
    status, card = call(srv, "/v1/models/sft")
    assert status == 200 and card["id"] == "sft" and card["context_length"] == 64


def test_an_unknown_model_is_a_404_naming_every_model_served(two_models):
    srv, _ = two_models
    status, err = call(srv, "/v1/chat/completions", {"model": "dpo", "messages": QUESTION})
    assert status == 404 and err["error"]["code"] == "model_not_found"
    assert "'base'" in err["error"]["message"] and "'sft'" in err["error"]["message"]
    assert call(srv, "/v1/models/dpo")[0] == 404


def test_metrics_sum_the_load_of_every_engine(two_models):
    srv, _ = two_models
    status, text = call(srv, "/metrics")
    assert status == 200 and "\nllm_batch_slots 8\n" in text  # two engines of 4 slots


def test_a_repeated_prompt_prefix_is_served_from_the_cache_with_the_same_answer(two_models):
    srv, _ = two_models
    long_question = [{"role": "user", "content": "Where does Noin Marora live? " * 3}]
    body = {"model": "sft", "messages": long_question, "temperature": 0, "max_tokens": 4}
    first, second = call(srv, "/v1/chat/completions", body), call(srv, "/v1/chat/completions", body)
    assert first[0] == second[0] == 200
    assert first[1]["choices"][0]["message"] == second[1]["choices"][0]["message"]
    metrics = dict(
        line.rsplit(" ", 1) for line in call(srv, "/metrics")[1].splitlines() if not line.startswith("#")
    )
    hits, looked_up = (float(metrics[f"llm_prefix_cache_{k}_tokens_total"]) for k in ("hit", "prompt"))
    assert 16 <= hits < looked_up  # the second asking reused at least one 16-token block


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_chat_page_compare_mode_shows_every_models_answer_side_by_side(two_models, tok):
    srv, models = two_models
    run = subprocess.run(
        [
            "node",
            str(REPO / "tests" / "chat_page_compare_harness.js"),
            f"http://127.0.0.1:{srv.server_address[1]}",
            str(REPO / "07_distill_quant" / "chat_page.html"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    page = json.loads(run.stdout)
    assert page["options"] == ["base", "sft", "*"] and page["shown"]
    assert page["label"].startswith("comparing base, sft")
    assert [c["model"] for c in page["columns"]] == ["base", "sft"]
    assert all(c["cls"] == "assistant" for c in page["columns"])
    for c in page["columns"]:  # each column holds its own model's answer (the server's default 6 tokens)
        assert c["text"].removesuffix(" […]") == greedy_answer(models[c["model"]], tok)


def test_compare_entries_that_cannot_be_served_are_one_line_errors(tmp_path, tok):
    tok.save(tmp_path / "tokenizer")
    write_manifest(tmp_path / "tokenizer", stage="02_tokenizer", command="(test)", config={})
    model = model_of(tok, 1)
    ckpt = tmp_path / "sft" / "ckpt.pt"
    save_checkpoint(ckpt, dataclasses.asdict(model.cfg), model.state_dict(), tokenizer="../tokenizer")
    with pytest.raises(UserError, match="no checkpoint at"):
        serve.main(["--ckpt", str(ckpt), "--compare", f"base={tmp_path / 'nope.pt'}"])
    with pytest.raises(UserError, match="used twice"):
        serve.main(["--ckpt", str(ckpt), "--compare", f"a={ckpt},a={ckpt}"])
    with pytest.raises(UserError, match="used twice"):  # the default model's own id, sft's folder name
        serve.main(["--ckpt", str(ckpt), "--compare", str(ckpt)])
