"""The world changes: people move to another city. Update the model three ways and measure each.

    python 05_sft_lora/knowledge_update.py --run runs/tiny            # ~1-2 minutes on 2 CPU cores
    python 05_sft_lora/knowledge_update.py --run runs/tiny --replay 0.25 --out runs/tiny/ku_replay

A deployed model is stale the day after its pretraining data was collected. Here the stale fact is
concrete: 40 people of 01's world move to another city. The three usual ways to teach the model:

    cpt   continued pretraining on new biographies of the movers (01's biographies.biography_pool on
          the changed world: every sentence of a biography, in every template and order), plain LM
          loss on every token, all weights, with 04's optimizer, schedule, clipping and batch sampler
    sft   full fine-tuning on the new question-answer pairs ("Where does X live?" -> "X lives in
          NewCity.", English and Chinese, biographies.qa_pairs), by running 05's sft.py
    lora  the same QA through a LoRA adapter (sft.py --method lora): the base is untouched and the
          update is a file of kilobytes that can be switched off

each from 04's pretrained base (runs/<name>/pretrain/best.pt), the same steps and batch size,
optionally mixing pretraining windows into every batch (--replay, "rehearsal"). Then, for the base
and each updated model, on the same probes:

- new fact: does it name the new city? Four probes per mover: two completions ("X lives in", the
  biographies' own words; a phrasing no document uses, 01's tasks.recall_probes) and two chat
  questions (the trained wording; an unseen one, "In which city does X live?"). One probe of each kind
  per person: Wilson intervals over the movers.
- old fact: does it still name the old city on the same probes? (the movers are chosen among the
  people whose old city the base completes, so the base says it for most of them)
- forgetting elsewhere: fact recall of every other person (all attributes, both phrasings, 04's
  fact_recall), the movers' unchanged attributes (job, pet, ...), and the loss on the pretraining test
  split (04's window_token_losses); each as the change from the base, paired, with a bootstrap
  interval over people or windows.

The bar: an update that reaches words it was not trained on. For the best of the three methods, the
movers' new-city rate on the two unseen probes (the unseen completion and the unseen question, averaged
per person) must lie with its interval (bootstrap over movers, Bonferroni over the three methods)
wholly above the strongest cheap rate: the base's own on the same probes (it never read the new city),
or the one-city answer, the share of movers whose new city is the commonest new city (a model that
learnt only "the movers went to Ronara" and says it for everyone).
Each method's new/old/forgetting numbers are in "bars" and the table.

Interview questions it answers:
- How do you update a fact an LLM learned in pretraining? (continued pretraining on documents that
  state the new fact, SFT on QA about it, or a LoRA adapter; knowledge editing (ROME/MEMIT) rewrites
  one MLP directly; retrieval avoids the weights altogether)
- Does training on "X lives in B" remove "X lives in A"? (only where the same words were trained: a
  probe in other words can still find the old fact; measure old-fact rates on unseen phrasings)
- Why does SFT on the new QA update the answer but not the knowledge? (it trains one question form;
  a completion or a reworded question reaches the old association, which the QA never touched)
- What does an update cost elsewhere? (other people's facts and the general loss: catastrophic
  forgetting, less with fewer trained weights (LoRA) and with replay of the old data)
"""

import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(REPO),
    str(REPO / "01_data"),
    str(REPO / "02_tokenizer"),
    str(REPO / "03_model"),
    str(REPO / "04_pretrain"),
]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.devices import resolve_device
from common.files import markdown_table, read_json, write_json, write_jsonl
from common.layout import RunLayout
from common.outcome import make_bar
from common.runs import check_artifact, fresh_output, write_manifest
from common.stats import bootstrap_interval, paired_change, wilson_interval
from world import build_world  # 01_data (public functions only)
from tasks import recall_probes  # 01_data
from bpe import BPETokenizer  # 02_tokenizer
from divergence import DivergenceGuard  # 03_model
from gpt import GPT  # 03_model
from optimizers import Schedule, clip_grad_norm, lr_at, make_optimizer, param_groups, set_lr  # 04_pretrain
from batches import batch_starts, get_batch, load_shards, load_test_shard  # 04_pretrain
from fact_recall import completion_matches, greedy_completions  # 04_pretrain

from finetuned import load_finetuned, run_sft
from world_update import (
    PROBES,
    UNSEEN,
    choose_moves,
    city_probes,
    measure,
    moved_world,
    other_fact_probes,
    run_world,
    update_conversations,
    update_texts,
)

METHODS = ("cpt", "sft", "lora")


@dataclass
class UpdateConfig:
    run: str = option("", "run folder runs/<name>: reads data/ (the world), tokenizer/, tokens/, pretrain/")
    out: str = option("", "output folder; empty = <run>/knowledge_update")
    n_moved: int = option(40, "people who move to another city (the probes' n)", min=1)
    methods: list = option(list(METHODS), "update methods to run", sep=",")
    steps: int = option(100, "optimizer steps of every method", min=1)
    batch_size: int = option(16, "rows per step (windows of biographies, or packed QA)", min=1)
    lr_cpt: float = option(3e-4, "peak learning rate of continued pretraining (all weights)", min=0.0)
    lr_sft: float = option(3e-4, "peak learning rate of full SFT (sft.py's default for full)", min=0.0)
    lr_lora: float = option(3e-3, "peak learning rate of the LoRA update (sft.py's default)", min=0.0)
    lora_r: int = option(8, "LoRA rank", min=1)
    replay: float = option(
        0.0, "fraction of each batch that is pretraining text (all methods)", min=0.0, max=0.9
    )
    test_windows: int = option(0, "pretraining test windows for the loss (0 = the whole split)", min=0)
    seed: int = option(0, "which people move where, and the training seed")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the result already in the output folder")


PRESETS = {
    "tiny": {},
    "micro": dict(n_moved=4, steps=4, batch_size=4, test_windows=4),
}


# ----------------------------------------------------------------------------- the three updates


def continued_pretraining(model, tok, texts, pre_train, cfg: UpdateConfig, device) -> dict:
    """Train every weight on the new biographies: 04's recipe (AdamW, warmup + cosine, global-norm
    clipping) on random windows of the biographies' token stream (04's batch_starts/get_batch), with
    `replay` of each batch taken from the pretraining shard."""
    eot = tok.eot_id
    stream = np.array([t for text in texts for t in [eot, *tok.encode_ordinary(text)]], dtype=np.int64)
    T = model.cfg.block_size
    if len(stream) < T + 2:
        raise UserError(
            f"the new biographies hold {len(stream)} tokens, fewer than a window of {T}; raise --n-moved"
        )
    n_pre = round(cfg.replay * cfg.batch_size)
    n_new = max(1, cfg.batch_size - n_pre)
    opt = make_optimizer("adamw", param_groups(model, 0.0), cfg.lr_cpt, (0.9, 0.95))
    sched = Schedule(cfg.lr_cpt, cfg.lr_cpt / 10, min(20, cfg.steps // 5), cfg.steps, "cosine")
    params = [p for p in model.parameters() if p.requires_grad]
    guard = DivergenceGuard(lower=f"--lr-cpt (now {cfg.lr_cpt:g})", vocab_size=model.cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model.train()
    losses = []
    for step in range(cfg.steps):
        set_lr(opt, lr_at(step, sched))
        x, y = get_batch(stream, batch_starts(len(stream), T, n_new, cfg.seed, step), T, device)
        loss = model(x, y)[1]
        if n_pre:  # rehearsal: the same LM loss on windows of the old corpus, weighted by their share
            px, py = get_batch(
                pre_train, batch_starts(len(pre_train), T, n_pre, cfg.seed + 1, step), T, device
            )
            loss = (1 - cfg.replay) * loss + cfg.replay * model(px, py)[1]
        loss.backward()
        grad_norm = clip_grad_norm(params, 1.0)
        guard.check(step + 1, loss, grad_norm)  # the one divergence guard every trainer uses (03)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    model.eval()
    return {"tokens": int(len(stream)), "first_loss": losses[0].item(), "last_loss": losses[-1].item()}


def sft_update(cfg: UpdateConfig, method: str, train_file: Path, out: Path, log: Path) -> Path:
    """05's sft.py (full or LoRA) on the new QA, in its own process (it is a command, not a library)."""
    lr = cfg.lr_sft if method == "sft" else cfg.lr_lora
    args = [
        *(
            "--run",
            cfg.run,
            "--out",
            str(out),
            "--train-file",
            str(train_file),
            "--heldout-file",
            str(train_file),
        ),
        *("--method", "full" if method == "sft" else "lora", "--lora-r", str(cfg.lora_r), "--lr", f"{lr:g}"),
        *("--steps", str(cfg.steps), "--batch-size", str(cfg.batch_size), "--seed", str(cfg.seed)),
        *("--val-frac", "0", "--eval-limit", "8", "--no-eval-base", "--zh-heldout-file", "none"),
        *("--mix-pretrain", f"{cfg.replay:g}", "--forget-windows", "2", "--device", cfg.device),
    ]
    run_sft(args, log, what=f"the {method} update")
    return out


# ----------------------------------------------------------------------------- the comparison


def rate(values) -> dict:
    """Mean of 0/1 values with its Wilson interval."""
    return {
        "value": float(np.mean(values)),
        "interval": list(wilson_interval(sum(values), len(values))),
        "n": len(values),
    }


def unseen_per_person(m: dict, which: str) -> np.ndarray:
    """Per mover: the share of the two unseen probes (completion, question) naming `which` city."""
    return np.mean([m[k][which] for k in UNSEEN], axis=0)


def method_summary(m: dict, base: dict) -> dict:
    """A method's (or the base's) rates per probe kind and its changes from the base."""
    out = {f"{w}_{k}": rate(m[k][w]) for k in PROBES for w in ("new", "old")}
    for w in ("new", "old"):
        x = unseen_per_person(m, w)
        out[f"{w}_unseen"] = {"value": float(x.mean()), "interval": list(bootstrap_interval(x)), "n": len(x)}
    out["others_change"] = paired_change(m["others"], base["others"])
    out["unchanged_change"] = paired_change(m["unchanged"], base["unchanged"])
    out["test_loss"] = float(np.mean(m["test_loss"]))
    out["test_loss_change"] = paired_change(m["test_loss"], base["test_loss"])
    return out


def update_bar(results: dict, base: dict, new_cities: list) -> dict:
    """The best method's new-city rate on the unseen probes, its bootstrap interval at the Bonferroni
    level over the methods tried, wholly above the stronger of two cheap rates: the base's on the same
    probes, and the one-city answer's (the commonest of `new_cities`, one per mover, said for all)."""
    k = len(results)
    level = 1 - 0.05 / k
    scores = {name: unseen_per_person(m, "new") for name, m in results.items()}
    best = max(scores, key=lambda n: scores[n].mean())
    baselines = {
        "the base before the update (it never read the new city)": float(
            unseen_per_person(base, "new").mean()
        ),
        "one city for every mover (the commonest new city)": max(map(new_cities.count, new_cities))
        / len(new_cities),
    }
    name = max(baselines, key=baselines.get)
    return make_bar(
        f"movers naming the new city in words no update trained on ({best}, best of {k})",
        float(scores[best].mean()),
        threshold=baselines[name],
        direction="higher",
        baseline=baselines[name],
        baseline_name=name,
        interval=bootstrap_interval(scores[best], level=level),
        n=len(scores[best]),
        note=f"per mover the mean of an unseen completion and an unseen question; bootstrap over movers at {level:.3f} (Bonferroni over {k})",
    )


TABLE_ROWS = [  # (row label, summary key, a change from the base?)
    ("new city: 'X lives in' (the biographies' words)", "new_cloze_corpus", False),
    ("new city: 'Where does X live?' (the QA's words)", "new_chat_trained", False),
    ("new city: unseen words (completion + question)", "new_unseen", False),
    ("old city still said: 'X lives in'", "old_cloze_corpus", False),
    ("old city still said: 'Where does X live?'", "old_chat_trained", False),
    ("old city still said: unseen words", "old_unseen", False),
    ("other people's facts recalled, change", "others_change", True),
    ("movers' other facts (job, pet, ...), change", "unchanged_change", True),
    ("test loss (nats/token), change", "test_loss_change", True),
]


def table(summaries: dict) -> str:
    """One row per measurement, one column per model (the base first): value [95 % interval]."""
    ci = lambda s: f"{s['value']:.2f} [{s['interval'][0]:.2f}, {s['interval'][1]:.2f}]"
    dci = lambda s: f"{s['value']:+.3f} [{s['interval'][0]:+.3f}, {s['interval'][1]:+.3f}]"
    rows = []
    for label, key, is_change in TABLE_ROWS:
        row = {"measured on the movers (n) or elsewhere": label}
        for name, s in summaries.items():
            if not is_change:
                row[name] = ci(s[key])
            elif name == "base":
                row[name] = f"{s['test_loss']:.3f}" if key == "test_loss_change" else "(before)"
            else:
                row[name] = dci(s[key])
        rows.append(row)
    return markdown_table(rows, list(rows[0]))


def check_update_config(cfg: UpdateConfig):
    if not cfg.run:
        raise UserError("pass --run runs/<name> (a run with data/, tokenizer/, tokens/ and pretrain/)")
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise UserError(f"--methods {','.join(cfg.methods)}: choose from {','.join(METHODS)}")


def knowledge_update(cfg: UpdateConfig, argv=None) -> dict:
    """Change the world, run each method, measure all against the base; writes <out>/ and returns the outcome."""
    check_update_config(cfg)
    run = Path(cfg.run)
    layout = RunLayout(run)
    out = Path(cfg.out) if cfg.out else run / "knowledge_update"
    for folder in ("pretrain", "tokenizer", "tokens"):
        check_artifact(layout.folder(folder), made_by=layout.made_by(folder))
    wcfg = run_world(run)
    device = resolve_device(cfg.device)
    base_path = layout.pretrain / ("best.pt" if (layout.pretrain / "best.pt").is_file() else "ckpt.pt")
    with fresh_output(out, cfg.overwrite) as tmp:
        outcome = update_into(tmp, cfg, wcfg, base_path, device, argv)
    print(outcome["table"])
    print(outcome["headline"])
    return outcome


def update_into(tmp: Path, cfg, wcfg, base_path: Path, device, argv) -> dict:
    run, t0 = Path(cfg.run), time.time()
    world = build_world(wcfg)
    tok = BPETokenizer.load(RunLayout(run).tokenizer)
    base = GPT.from_checkpoint(base_path, map_location=device).eval()
    pre_train, _, meta = load_shards(run, base.cfg.block_size)
    test = load_test_shard(run, meta)
    if test is None:
        raise UserError(f"{run}/tokens has no test.bin; rerun `{RunLayout(run).made_by('tokens')}`")

    corpus_city = [r for r in recall_probes(world) if r["attribute"] == "city" and r["phrasing"] == "corpus"]
    knows = [
        completion_matches(t, r["answer"])
        for r, t in zip(corpus_city, greedy_completions(base, tok, [r["prompt"] for r in corpus_city]))
    ]
    moves = choose_moves(world, knows, cfg.n_moved, cfg.seed)
    after = moved_world(world, moves)
    probes = city_probes(world, after, moves)
    others, unchanged = other_fact_probes(world, moves)
    texts, convs = update_texts(wcfg, after, moves), update_conversations(wcfg, after, moves)
    (tmp / "data").mkdir()
    write_jsonl(
        tmp / "data" / "moves.jsonl",
        [{"person": world.people[i]["name"], "old": o["name"], "new": n["name"]} for i, o, n in moves],
    )
    write_jsonl(tmp / "data" / "biographies.jsonl", [{"text": t} for t in texts])
    write_jsonl(tmp / "data" / "qa.jsonl", convs)
    print(f"{len(moves)} people move ({sum(knows[i] for i, _, _ in moves)} of them with the old city known to the base); "
          f"{len(texts)} new biographies, {len(convs)} new QA conversations")  # fmt: skip

    args = (probes, others, unchanged, test, cfg.test_windows, device)
    measured = {"base": measure(base, tok, *args)}
    info = {}
    for method in cfg.methods:
        t1 = time.time()
        if method == "cpt":
            model = copy.deepcopy(base)
            info[method] = continued_pretraining(model, tok, texts, pre_train, cfg, device)
        else:
            folder = sft_update(cfg, method, tmp / "data" / "qa.jsonl", tmp / method, tmp / f"{method}.log")
            model, _, _ = load_finetuned(folder, device)
            info[method] = {"file_kib": read_json(folder / "outcome.json")["file_kib"]}
        measured[method] = measure(model, tok, *args)
        info[method]["seconds"] = time.time() - t1
        print(f"{method}: {info[method]['seconds']:.0f} s", flush=True)

    summaries = {name: method_summary(m, measured["base"]) for name, m in measured.items()}
    new_cities = [r["new"] for r in probes["chat_unseen"]]
    bar = update_bar({k: v for k, v in measured.items() if k != "base"}, measured["base"], new_cities)
    bars = [bar] + [method_bar(name, summaries[name], summaries["base"]) for name in cfg.methods]
    text = table(summaries)
    best = bar["metric"].split("(")[1].split(",")[0]
    s = summaries[best]
    headline = (
        f"{len(moves)} movers; new city in unseen words: "
        + ", ".join(f"{n} {summaries[n]['new_unseen']['value']:.2f}" for n in cfg.methods)
        + f" (base {summaries['base']['new_unseen']['value']:.2f}); old city still said ('X lives in') "
        + ", ".join(f"{n} {summaries[n]['old_cloze_corpus']['value']:.2f}" for n in cfg.methods)
        + f" (base {summaries['base']['old_cloze_corpus']['value']:.2f}); {best}: other people's facts "
        + f"{s['others_change']['value']:+.3f}, test loss {s['test_loss_change']['value']:+.3f}"
    )
    outcome = {
        "moves": len(moves),
        "known_before": int(sum(knows[i] for i, _, _ in moves)),
        "methods": info,
        "summaries": summaries,
        "examples": {n: {k: m[k]["examples"] for k in PROBES} for n, m in measured.items()},
        "table": text,
        "seconds": time.time() - t0,
        "headline": headline,
        "bar": bar,
        "bars": bars,
    }
    write_json(tmp / "outcome.json", outcome)
    (tmp / "table.md").write_text(text + "\n")
    write_manifest(
        tmp,
        stage="05_sft_lora",
        command=command_line(__file__, argv),
        config=asdict(cfg),
        inputs=[
            RunLayout(run).data,
            RunLayout(run).pretrain,
            RunLayout(run).tokenizer,
            RunLayout(run).tokens,
        ],
    )
    return outcome


def method_bar(name: str, s: dict, base: dict) -> dict:
    """Per method: the old city still named in the biographies' own words ('X lives in'), below the base."""
    return make_bar(
        f"{name}: movers whose old city is still completed ('X lives in')",
        s["old_cloze_corpus"]["value"],
        threshold=base["old_cloze_corpus"]["value"],
        direction="lower",
        baseline=base["old_cloze_corpus"]["value"],
        baseline_name="the base before the update",
        interval=s["old_cloze_corpus"]["interval"],
        n=s["old_cloze_corpus"]["n"],
        note="Wilson 95 %; new city there: "
        f"{s['new_cloze_corpus']['value']:.2f}; other people's facts {s['others_change']['value']:+.3f}",
    )


def main(argv=None):
    cfg, _ = parse_config(UpdateConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    knowledge_update(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
