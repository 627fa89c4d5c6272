"""01_data/contamination.py and the probe phrasings of world.py: overlaps worked by hand, and novel
fact-recall phrasings that no generated document uses."""

import json

import pytest

import prepare
from contamination import contamination_report, longest_overlaps, words
from tasks import recall_probes
from world_facts import RECALL_PHRASINGS
from world import WorldConfig, build_world
from world_corpus import generate_corpus


def test_longest_overlap_by_hand():
    train = ["The cat sat on the mat.", "A dog ran far away", "我们在北京"]
    items = [
        "the cat sat",
        "cat sat on the mat today",
        "dog ran far",
        "zebra",
        "mat a dog",
        "他们在北京",
        "Cat, SAT",
    ]
    # articles and punctuation are dropped, case folded: "cat sat" (2), "cat sat on mat" (4) ...
    # "mat a dog" -> [mat, dog]: "mat" ends one document and "dog" starts the next: no 2-gram spans them
    assert longest_overlaps(train, items) == [2, 4, 3, 0, 1, 4, 2]
    assert words("The U.S. is big") == ["u", "s", "is", "big"]


def test_novel_probe_phrasings_never_occur_in_a_generated_corpus_and_corpus_ones_do():
    w = build_world(WorldConfig())
    docs = [
        d["text"] for d in generate_corpus(w, 0, 200_000, {"dialog": 0.3, "knowledge": 0.4, "stories": 0.3})
    ]
    probes = recall_probes(w)
    novel = [p for p in probes if p["phrasing"] == "novel"]
    assert len(novel) == len(w.people) * len(RECALL_PHRASINGS)
    # the novel prompt without the person: its template's fixed words never occur in that order
    templates = [t.format(name="", zh="", job="") for _, ts in RECALL_PHRASINGS.values() for t in ts]
    assert all(o < len(words(t)) for o, t in zip(longest_overlaps(docs, templates), templates)), templates
    overlaps = longest_overlaps(docs, [p["prompt"] for p in novel])
    assert all(o < len(words(p["prompt"])) for o, p in zip(overlaps, novel))
    corpus = [p for p in probes if p["phrasing"] == "corpus" and p["attribute"] == "job"]
    # the corpus phrasing is a biography template: most people's biographies use it (the corpus above
    # holds only a few biographies per person, so look in each person's whole pool)
    docs += [b for bios in w.bios.values() for b in bios]
    whole = longest_overlaps(docs, [f"{p['prompt']} {p['answer']}" for p in corpus])
    assert (
        sum(o == len(words(f"{p['prompt']} {p['answer']}")) for o, p in zip(whole, corpus)) > len(corpus) / 2
    )


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    prepare.main(["--out", str(out), "--chars", "30000"])
    return out / "data"


def test_prepare_writes_the_contamination_report(micro_data):
    stats = json.loads((micro_data / "stats.json").read_text())
    rows = stats["contamination"]
    assert rows == contamination_report(micro_data)
    sets = {(r["set"], r["training"]) for r in rows}
    assert ("held-out arithmetic", "SFT train") in sets and (
        "fact probes, novel phrasing",
        "pretraining",
    ) in sets
    for r in rows:
        assert 0 <= r["median_overlap"] <= r["max_overlap"] and 0 <= r["share_whole"] <= 1 and r["n"] > 0
