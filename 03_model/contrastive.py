"""Contrastive pretraining (the third pretraining objective): InfoNCE on sentence embeddings.

Masked LM and causal LM (transformer.py) teach a model to predict tokens. Contrastive learning
teaches it *which texts mean the same thing*: two views of one thing (a positive pair) must embed
close together, and everything else in the batch (the in-batch negatives) far apart.

    z_i = normalize(mean-pool(encoder(x_i)))           (B, d) unit vectors, one per text
    s_ij = z_i · z'_j / tau                             (B, B) cosine similarities over a temperature
    InfoNCE = -1/B sum_i log softmax_j(s_ij)[i]          row i's positive is column i, the rest negatives

The encoder is the bidirectional one of transformer.py (BERT-style, no causal mask), mean-pooled.
Positives are made two ways, compared here:

    paraphrase  two independent renderings of one person from the world (01_data/world.py): different
                facts, different templates, and synonym replacement ("lives in" -> "resides in")
    simcse      the same text twice, different only by dropout noise (SimCSE, Gao et al. 2021)
    no-neg      paraphrase positives but no negatives (loss = alignment only): the embeddings collapse

The measured outcome is retrieval on held-out people, who never appear in training: for each short
text about a person, find another text about the same person among all the others (recall@1, MRR),
against bag-of-words TF-IDF cosine and the untrained encoder, with 95 % intervals; and alignment /
uniformity (Wang and Isola 2020) before and after training:

    alignment  = E_{positive pairs} ||z - z+||^2               (lower: positives closer)
    uniformity = log E_{all pairs} exp(-2 ||z - z'||^2)        (lower: spread over the sphere; 0 = collapse)

    python 03_model/contrastive.py --data runs/tiny                 # ~2-4 min on a laptop CPU
    python 03_model/contrastive.py --data runs/tiny --preset micro  # seconds, a smoke test

It writes runs/<name>/contrastive/{outcome.json,metrics.json,manifest.json} (--overwrite to replace);
the world is built from --world-seed, so no earlier stage is needed.

Interview questions it answers:
- Why does the temperature matter? (cosines lie in [-1, 1]; with tau = 1 the softmax over them is
  almost flat, so the loss cannot push the positive far above the negatives; a small tau (0.05-0.1)
  sharpens it and weights the hardest negatives most; too small and the gradients come from one
  negative only and training is noisy)
- Why in-batch negatives? (the other B-1 positives are free negatives: one (B, B) matrix product scores
  them all, no extra forward passes; a bigger batch gives more and harder negatives, which is why
  CLIP and SimCLR use batches of thousands, and MoCo keeps a queue)
- Why do embeddings collapse without negatives? (alignment alone is minimized by mapping every input to
  the same point: uniformity -> 0; the negatives in the softmax's denominator are what push different
  texts apart. BYOL/SimSiam avoid collapse without negatives only through a predictor and stop-gradient)
- Why is SimCSE's dropout a positive at all? (two dropout masks give two slightly different embeddings
  of one text: a minimal augmentation that keeps the meaning exactly; it teaches uniformity well but
  not which different wordings mean the same, which supervised paraphrase pairs do)
- Why can TF-IDF be hard to beat? (on short texts that share rare words - names - lexical overlap is
  a strong signal; learned embeddings win where the words differ but the meaning does not)
"""

import math
import random
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "01_data"), str(REPO / "02_tokenizer"), str(REPO / "kernels")]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.files import write_json
from common.outcome import make_bar
from common.runs import claim_output, run_lock, staged_dir, write_manifest
from common.stats import bootstrap_interval
from transformer import N_SENTINELS, Transformer, TransformerConfig  # 03_model (this folder)
from world import WorldConfig, build_world  # 01_data
from world_facts import person_facts_en  # 01_data

# Word-level synonym replacement (the seed's "synonym replacement"): each phrase is swapped with
# probability `synonym_p` in every rendering, so two views of one fact rarely share all their words.
SYNONYMS = {
    "lives in": ["resides in", "stays in", "makes a home in"],
    "works as": ["is employed as", "has a job as"],
    "years old": ["years of age"],
    "favorite": ["preferred", "favourite"],
    "color": ["colour", "shade"],
    "best friend": ["closest friend", "dearest friend"],
    "good friends": ["close friends", "old friends"],
    "named": ["called", "known as"],
    "called": ["named", "known as"],
    "owns": ["possesses", "has"],
    "made of": ["built from", "crafted from"],
    "keeps": ["holds", "owns"],
    "likes": ["loves", "prefers"],
    "pet": ["animal", "companion"],
    "lives with": ["stays with", "belongs to"],
    "turned": ["reached", "became"],
}
_SYN_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, SYNONYMS), key=len, reverse=True)) + r")\b")
PAD = 0  # byte 0 never occurs in the rendered text


def synonym_replace(rng: random.Random, text: str, p: float) -> str:
    """Each phrase of SYNONYMS in `text` replaced by a random synonym with probability p."""
    return _SYN_RE.sub(lambda m: rng.choice(SYNONYMS[m.group(1)]) if rng.random() < p else m.group(1), text)


def person_views(rng: random.Random, person: dict, k: int, n_facts: int, synonym_p: float) -> list[str]:
    """k short texts about one person on disjoint facts (n_facts sentences each, freshly phrased):
    two of them share no fact, only who they are about (name, first name or pronoun)."""
    facts = rng.sample(person_facts_en(rng, person), k * n_facts)  # a person has >= 5 facts
    return [
        " ".join(synonym_replace(rng, f, synonym_p) for f in facts[i * n_facts : (i + 1) * n_facts])
        for i in range(k)
    ]


# ----------------------------------------------------------------------------- the encoder


def encode_texts(texts: list[str], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 bytes padded with PAD: (ids (N, T), keep (N, T) = 1 on real bytes)."""
    rows = [list(t.encode("utf-8"))[:block_size] for t in texts]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, (ids != PAD).float()


def embed(model: Transformer, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings: the encoder's states mean-pooled over real tokens, L2-normalized (N, d).
    (Padding is attended to but never pooled; it is the same PAD byte in training and evaluation.)"""
    h = model.encode(ids)  # (N, T, d), bidirectional
    pooled = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
    return F.normalize(pooled, dim=-1)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives: z1[i] and z2[i] are a positive pair (B, d) each."""
    logits = z1 @ z2.T / tau  # (B, B); the diagonal holds the positives
    labels = torch.arange(len(z1), device=z1.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def alignment(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """Wang and Isola's alignment: mean squared distance of positive pairs (0 = identical)."""
    return (z1 - z2).pow(2).sum(-1).mean().item()


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """Wang and Isola's uniformity: log E exp(-t ||z_i - z_j||^2) over distinct pairs (0 = collapsed)."""
    return torch.pdist(z).pow(2).mul(-t).exp().mean().log().item()


# ----------------------------------------------------------------------------- retrieval


def retrieval_scores(sim: np.ndarray, labels: list) -> tuple[np.ndarray, np.ndarray]:
    """Per query i: (hit@1, reciprocal rank of the first item with the same label), itself excluded."""
    sim = sim.copy()
    np.fill_diagonal(sim, -np.inf)
    labels = np.asarray(labels)
    order = np.argsort(-sim, axis=1, kind="stable")
    same = labels[order] == labels[:, None]  # (N, N) in rank order
    first = same.argmax(axis=1)  # rank (0-based) of the first positive
    return (first == 0).astype(float), 1.0 / (first + 1)


def tfidf_similarity(texts: list[str]) -> np.ndarray:
    """Bag-of-words TF-IDF cosine (lowercased words, idf = log(N/df) + 1): the lexical baseline."""
    docs = [Counter(re.findall(r"\w+", t.lower())) for t in texts]
    df = Counter(w for d in docs for w in d)
    vocab = {w: i for i, w in enumerate(sorted(df))}
    idf = np.array([math.log(len(docs) / df[w]) + 1 for w in sorted(df)])
    X = np.zeros((len(docs), len(vocab)))
    for i, d in enumerate(docs):
        for w, c in d.items():
            X[i, vocab[w]] = c * idf[vocab[w]]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X @ X.T


def summarize(hits: np.ndarray, rr: np.ndarray, labels: list) -> dict:
    """recall@1 and MRR with 95 % bootstrap intervals that resample *people*, not queries: the
    queries about one person share their difficulty, so resampling queries would give too narrow an
    interval (every person has the same number of queries, so the mean of per-person means is the mean)."""
    labels = np.asarray(labels)
    people = np.unique(labels)
    per_person = [
        np.array([hits[labels == p].mean() for p in people]),
        np.array([rr[labels == p].mean() for p in people]),
    ]
    return {
        "recall_at_1": float(hits.mean()),
        "recall_at_1_interval": list(bootstrap_interval(per_person[0])),
        "mrr": float(rr.mean()),
        "mrr_interval": list(bootstrap_interval(per_person[1])),
        "n_queries": len(hits),
        "n_people": len(people),
    }


# ----------------------------------------------------------------------------- training


@dataclass
class ContrastiveConfig:
    data: str = option("runs/tiny", "run folder runs/<name>; results go to runs/<name>/contrastive")
    world_seed: int = option(0, "seed of the generated world the texts are about")
    n_people: int = option(
        300, "people in the world; the last --held-out of them are never trained on", min=8
    )
    held_out: int = option(60, "held-out people for retrieval", min=4)
    views: int = option(
        4, "texts per held-out person (each one is a query; the rest are its positives)", min=2
    )
    n_facts: int = option(
        1, "facts per text; --views x --n-facts <= 5 (texts of one person share no fact)", min=1, max=5
    )
    synonym_p: float = option(0.5, "probability of replacing each synonym-table phrase", min=0.0, max=1.0)
    methods: list[str] = option(["paraphrase", "simcse", "no-neg"], "positives to train with", sep=",")
    steps: int = option(120, "training steps per method", min=1)
    batch_size: int = option(32, "positive pairs per step (distinct people: the rest are negatives)", min=2)
    tau: float = option(0.05, "InfoNCE temperature", min=1e-3)
    lr: float = option(1e-3, "peak learning rate", min=0.0)
    n_layer: int = option(2, "encoder layers", min=1)
    n_head: int = option(4, "attention heads", min=1)
    n_embd: int = option(64, "model width", min=8)
    dropout: float = option(0.1, "dropout (SimCSE's only augmentation)", min=0.0, max=0.9)
    block_size: int = option(160, "bytes per text (longer texts are cropped)", min=16)
    seed: int = option(0, "random seed")
    threads: int = option(0, "torch CPU threads; 0 = torch's default", min=0)
    overwrite: bool = option(False, "replace the results already in runs/<name>/contrastive")


PRESETS = {
    "default": {},
    "micro": dict(
        n_people=60, held_out=16, steps=15, batch_size=8, n_layer=1, n_embd=32, methods=["paraphrase"]
    ),
}
METHODS = ("paraphrase", "simcse", "no-neg")


def check_contrastive_config(cfg: ContrastiveConfig):
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise UserError(f"--methods: unknown {bad or 'none given'}; choose from {', '.join(METHODS)}")
    if cfg.held_out + cfg.batch_size > cfg.n_people:
        raise UserError(
            f"--n-people {cfg.n_people} leaves fewer than --batch-size {cfg.batch_size} training people "
            f"after --held-out {cfg.held_out}; raise --n-people or lower the others"
        )
    if max(cfg.views, 2) * cfg.n_facts > 5:
        raise UserError(
            f"--views {cfg.views} x --n-facts {cfg.n_facts} is over the 5 facts every person has; lower one"
        )
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"--n-embd {cfg.n_embd} is not divisible by --n-head {cfg.n_head}")


def new_encoder(cfg: ContrastiveConfig) -> Transformer:
    torch.manual_seed(cfg.seed)
    tc = TransformerConfig(
        vocab_size=256 + 2 + N_SENTINELS,
        block_size=cfg.block_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        dropout=cfg.dropout,
    )
    return Transformer(tc)


def training_pair(rng: random.Random, person: dict, method: str, cfg: ContrastiveConfig) -> tuple[str, str]:
    if method == "simcse":
        (a,) = person_views(rng, person, 1, cfg.n_facts, cfg.synonym_p)
        return a, a  # the two views differ only by dropout inside the encoder
    a, b = person_views(rng, person, 2, cfg.n_facts, cfg.synonym_p)
    return a, b


def train_encoder(method: str, cfg: ContrastiveConfig, people: list, log=None) -> tuple[Transformer, list]:
    """A fresh encoder trained `cfg.steps` steps on pairs from `people`; returns (model, losses)."""
    model = new_encoder(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng, losses = random.Random(cfg.seed), []
    warmup = max(1, cfg.steps // 10)  # post-LN layers need a warmup
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / warmup)
        batch = rng.sample(people, cfg.batch_size)  # distinct people: every other row is a true negative
        pairs = [training_pair(rng, p, method, cfg) for p in batch]
        z1 = embed(model, *encode_texts([a for a, _ in pairs], cfg.block_size))
        z2 = embed(model, *encode_texts([b for _, b in pairs], cfg.block_size))
        if method == "no-neg":
            loss = (z1 - z2).pow(2).sum(-1).mean()  # alignment only: nothing keeps texts apart
        else:
            loss = info_nce(z1, z2, cfg.tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % 50 == 0:
            log(f"  {method} step {step + 1}/{cfg.steps}: loss {np.mean(losses[-50:]):.3f}")
    return model, losses


def held_out_items(cfg: ContrastiveConfig, people: list) -> tuple[list, list]:
    """(texts, labels): cfg.views independent texts per held-out person, label = person index."""
    rng = random.Random(cfg.seed + 1)
    texts, labels = [], []
    for i, p in enumerate(people):
        texts += person_views(rng, p, cfg.views, cfg.n_facts, cfg.synonym_p)
        labels += [i] * cfg.views
    return texts, labels


@torch.no_grad()
def evaluate_encoder(model: Transformer, texts: list, labels: list, cfg: ContrastiveConfig) -> dict:
    """Retrieval and alignment/uniformity of the eval-mode encoder on the held-out texts."""
    model.eval()
    z = torch.cat(
        [embed(model, *encode_texts(texts[i : i + 64], cfg.block_size)) for i in range(0, len(texts), 64)]
    )
    hits, rr = retrieval_scores((z @ z.T).numpy(), labels)
    lab = torch.tensor(labels)
    a_idx, b_idx = torch.nonzero((lab[:, None] == lab[None, :]).triu(1), as_tuple=True)  # positive pairs
    return {
        **summarize(hits, rr, labels),
        "alignment": alignment(z[a_idx], z[b_idx]),
        "uniformity": uniformity(z),
    }


def run_experiment(cfg: ContrastiveConfig, log=print) -> dict:
    """Train every method, evaluate every contender on the held-out people; the metrics dict."""
    world = build_world(WorldConfig(seed=cfg.world_seed, n_people=cfg.n_people))
    train_people, test_people = world.people[: -cfg.held_out], world.people[-cfg.held_out :]
    texts, labels = held_out_items(cfg, test_people)
    log(f"{len(train_people)} training people; {len(test_people)} held-out people x {cfg.views} texts, e.g.")
    for t in texts[: cfg.views]:
        log(f"  {t}")
    results = {"tf-idf": summarize(*retrieval_scores(tfidf_similarity(texts), labels), labels)}
    results["untrained encoder"] = evaluate_encoder(new_encoder(cfg), texts, labels, cfg)
    for method in cfg.methods:
        t0 = time.perf_counter()
        model, losses = train_encoder(method, cfg, train_people, log)
        results[method] = {
            **evaluate_encoder(model, texts, labels, cfg),
            "loss_first": losses[0],
            "loss_last": float(np.mean(losses[-10:])),
            "train_seconds": round(time.perf_counter() - t0, 1),
        }
        log(f"trained {method}: loss {losses[0]:.3f} -> {results[method]['loss_last']:.3f} "
            f"in {results[method]['train_seconds']} s")  # fmt: skip
    chance = (cfg.views - 1) / (len(texts) - 1)
    return {"results": results, "chance_recall_at_1": chance, "n_items": len(texts), "examples": texts[:8]}


def outcome_block(metrics: dict) -> dict:
    """The bar: the best-trained encoder's recall@1 interval above the strongest baseline's value."""
    res = metrics["results"]
    baselines = {k: res[k]["recall_at_1"] for k in ("tf-idf", "untrained encoder")}
    base_name = max(baselines, key=baselines.get)
    trained = [m for m in METHODS if m in res]
    best = max(trained, key=lambda m: res[m]["recall_at_1"])
    bar = make_bar(
        f"recall@1 on held-out people ({best} positives)",
        res[best]["recall_at_1"],
        threshold=baselines[base_name],
        direction="higher",
        baseline=baselines[base_name],
        baseline_name=base_name,
        interval=res[best]["recall_at_1_interval"],
        n=res[best]["n_people"],
        note=f"{res[best]['n_queries']} queries about {res[best]['n_people']} held-out people; interval resamples people",
    )
    headline = (
        f"contrastive encoder ({best}) recall@1 {res[best]['recall_at_1']:.3f} vs {base_name} "
        f"{baselines[base_name]:.3f} on held-out people"
    )
    return {"headline": headline, "bar": bar}


def print_table(metrics: dict):
    print(f"\n{'contender':<20}{'recall@1 [95 % CI]':>26}{'MRR [95 % CI]':>26}{'align':>8}{'unif':>8}")
    for name, r in metrics["results"].items():
        lo, hi = r["recall_at_1_interval"]
        mlo, mhi = r["mrr_interval"]
        al = f"{r['alignment']:.3f}" if "alignment" in r else "-"
        un = f"{r['uniformity']:.3f}" if "uniformity" in r else "-"
        print(
            f"{name:<20}{r['recall_at_1']:>8.3f} [{lo:.3f}, {hi:.3f}]{r['mrr']:>10.3f} [{mlo:.3f}, {mhi:.3f}]"
            f"{al:>8}{un:>8}"
        )
    print(f"(chance recall@1 {metrics['chance_recall_at_1']:.3f}; {metrics['n_items']} held-out texts)")


def main(argv=None):
    cfg, _ = parse_config(ContrastiveConfig, argv, doc=__doc__, presets=PRESETS, default_preset="default")
    check_contrastive_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.data) / "contrastive"
    with run_lock(out):
        claim_output(out, cfg.overwrite, remove=False)  # refuse now, not after minutes of training
        metrics = run_experiment(cfg)
        print_table(metrics)
        outcome = outcome_block(metrics)
        print(f"\n{outcome['headline']}: {'PASSED' if outcome['bar']['passed'] else 'FAILED'}")
        with staged_dir(out) as tmp:
            write_json(tmp / "metrics.json", {"config": asdict(cfg), **metrics})
            write_json(tmp / "outcome.json", {**outcome, "results": metrics["results"]})
            write_manifest(
                tmp, stage="03_model/contrastive", command=command_line(__file__, argv), config=asdict(cfg)
            )
    print(f"wrote {out / 'outcome.json'}")


if __name__ == "__main__":
    run_cli(main)
