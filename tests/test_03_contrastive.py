"""Tests for 03_model/contrastive.py: InfoNCE, alignment/uniformity, retrieval metrics, the held-out
split, and the command's outcome and bad-input contract (micro sizes: a few seconds)."""

import json
import random

import numpy as np
import pytest
import torch

import contrastive as C
from common.cli import run_cli


def test_info_nce_is_log_b_for_identical_embeddings_and_small_for_separated_pairs():
    z = torch.nn.functional.normalize(torch.ones(8, 4), dim=-1)  # everything collapsed onto one point
    assert C.info_nce(z, z, tau=0.1).item() == pytest.approx(np.log(8), abs=1e-5)
    e = torch.eye(8)  # orthogonal pairs: the positive is the only cosine of 1
    assert C.info_nce(e, e, tau=0.05).item() < 1e-6


def test_alignment_and_uniformity_match_their_definitions():
    z = torch.nn.functional.normalize(torch.randn(16, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    d2 = torch.cdist(z, z).pow(2)
    off = ~torch.eye(16, dtype=torch.bool)
    assert C.uniformity(z) == pytest.approx(d2[off].mul(-2).exp().mean().log().item(), abs=1e-5)
    assert C.uniformity(torch.ones(4, 3) / 3**0.5) == pytest.approx(0.0, abs=1e-6)  # collapse
    assert C.alignment(z, z) == 0.0


def test_retrieval_scores_by_hand():
    # 4 items, two people; item 0's nearest is item 2 (wrong), then item 1 (right): rank 2
    sim = np.array([[1, 0.5, 0.9, 0.1], [0.5, 1, 0.2, 0.3], [0.9, 0.2, 1, 0.8], [0.1, 0.3, 0.8, 1]])
    hits, rr = C.retrieval_scores(sim, [0, 0, 1, 1])
    assert hits.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert rr.tolist() == [0.5, 1.0, 0.5, 1.0]


def test_tfidf_finds_the_text_sharing_rare_words():
    sim = C.tfidf_similarity(["Belmo Tarin bakes bread", "Belmo Tarin owns a cat", "Zed owns a cat"])
    assert sim[0, 1] > sim[0, 2] and np.allclose(np.diag(sim), 1)


def test_views_of_a_person_share_no_fact_and_held_out_people_are_never_trained_on():
    cfg = C.ContrastiveConfig(**C.PRESETS["micro"])
    world = C.build_world(C.WorldConfig(seed=0, n_people=cfg.n_people))
    p = world.people[0]
    views = C.person_views(random.Random(0), p, 4, 1, 0.0)
    assert len(set(views)) == 4
    texts, labels = C.held_out_items(cfg, world.people[-cfg.held_out :])
    assert len(texts) == cfg.held_out * cfg.views and labels[: cfg.views] == [0] * cfg.views
    trained = {q["name"] for q in world.people[: -cfg.held_out]}
    assert not trained & {q["name"] for q in world.people[-cfg.held_out :]}
    assert C.synonym_replace(random.Random(0), "she lives in Oslo", 1.0) != "she lives in Oslo"
    assert C.synonym_replace(random.Random(0), "she lives in Oslo", 0.0) == "she lives in Oslo"


def test_micro_run_writes_outcome_with_baselines_intervals_and_bar(tmp_path, capsys):
    C.main(["--preset", "micro", "--data", str(tmp_path), "--steps", "4", "--threads", "1"])
    out = json.loads((tmp_path / "contrastive" / "outcome.json").read_text())
    res = out["results"]
    assert {"tf-idf", "untrained encoder", "paraphrase"} <= set(res)
    for r in res.values():
        lo, hi = r["recall_at_1_interval"]
        assert 0 <= lo <= r["recall_at_1"] <= hi <= 1 and r["n_queries"] == 16 * 4
    assert out["bar"]["baseline_name"] in ("tf-idf", "untrained encoder")
    assert "recall@1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--methods", "triplet"], "--methods"),
        (["--views", "4", "--n-facts", "2"], "5 facts"),
        (["--n-people", "20", "--held-out", "16"], "--n-people"),
        (["--n-embd", "30", "--n-head", "4"], "divisible"),
        (["--tau", "0"], "--tau"),
    ],
)
def test_bad_input_is_one_error_line_exit_2(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as e:
        run_cli(C.main, ["--preset", "micro", "--data", str(tmp_path), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
    assert not (tmp_path / "contrastive").exists()
