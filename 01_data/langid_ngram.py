"""Language identification: a character n-gram naive-Bayes classifier, written from scratch.

Model. A document is a bag of character n-grams (n = 1..3 of the lowercased text). Naive Bayes
assumes the n-grams are independent given the language L, so

    log P(L | doc) = log P(L) + sum over n-grams g in doc of log P(g | L) + const,
    P(g | L) = (count(g, L) + alpha) / (total(L) + alpha * V)          (add-alpha smoothing)

and we predict the L with the largest score. N-grams are hashed into V = 2^18 buckets with a
polynomial hash computed by numpy over the code points, so training and scoring are a few vector
operations per document instead of a Python loop per n-gram.

Classes: "en", "zh" and "other". It is trained on generated text (English and Chinese documents of
a world built from a different seed than the corpus, and French/Spanish/German/Italian sentences
for "other" that differ from the ones noise_inject.py injects), which is why it works here; on real web text you would train on real labelled text
(e.g. Wikipedia per language) -- fastText's lid.176 is the same idea with learnt embeddings.

Interview questions it answers:
- How does language ID work and why are character n-grams enough? (languages differ in letter
  and letter-pair statistics; CJK characters alone identify Chinese)
- Why log probabilities? (products of thousands of small numbers underflow)
- Why smoothing? (an n-gram never seen in training would give probability 0 and veto the class)
"""

import random
from dataclasses import dataclass

import numpy as np

LANGS = ["en", "zh", "other"]


@dataclass
class LangIDConfig:
    max_n: int = 3
    buckets: int = 1 << 18
    alpha: float = 0.1
    max_chars: int = 2000  # score the first 2000 characters; enough for a confident answer


def ngram_ids(text: str, cfg: LangIDConfig) -> np.ndarray:
    """Hashed ids of all character n-grams, n = 1..max_n, of the lowercased text, shape (~n_chars·max_n,)."""
    cps = np.frombuffer(text[: cfg.max_chars].lower().encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = []
    for n in range(1, cfg.max_n + 1):
        if len(cps) < n:
            break
        h = np.full(len(cps) - n + 1, n, dtype=np.int64)
        for j in range(n):
            h = (h * 1_000_003 + cps[j : len(cps) - n + 1 + j]) % cfg.buckets
        ids.append(h)
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)


def train_langid(texts, labels, cfg: LangIDConfig = LangIDConfig()):
    """log P(L) (3,) and log P(g | L) (3, buckets) from labelled texts."""
    counts = np.zeros((len(LANGS), cfg.buckets))
    docs = np.zeros(len(LANGS))
    for text, lang in zip(texts, labels):
        k = LANGS.index(lang)
        counts[k] += np.bincount(ngram_ids(text, cfg), minlength=cfg.buckets)
        docs[k] += 1
    # >>> exercise: log P(L) from document counts; log P(g | L) from n-gram counts, add-alpha over all buckets
    log_prior = np.log(docs / docs.sum())
    log_like = np.log((counts + cfg.alpha) / (counts.sum(1, keepdims=True) + cfg.alpha * cfg.buckets))
    return log_prior, log_like
    # <<< exercise


def predict_lang(model, text: str, cfg: LangIDConfig = LangIDConfig()) -> str:
    log_prior, log_like = model
    ids = ngram_ids(text, cfg)
    # >>> exercise: argmax over languages of log P(L) + sum over the text's n-grams g of log P(g | L)
    scores = log_prior + log_like[:, ids].sum(axis=1)  # (3,)
    return LANGS[int(np.argmax(scores))]
    # <<< exercise


# Training text for "other": sentences written for this classifier only, *not* the ones noise_inject.py
# injects as wrong-language documents, so the wrong_lang score measures generalization.
OTHER_TRAIN = {
    "fr": [
        "La maison de {name} se trouve près de la gare de {city}.",
        "Nous avons visité le musée hier après-midi.",
        "Elle préfère le thé au lait et les gâteaux aux pommes.",
        "Les enfants courent dans le jardin pendant que le chien aboie.",
        "Il faut acheter des légumes, du fromage et une bouteille d'eau.",
        "Le renard dort sous un arbre au bord du chemin.",
        "Quand il pleut, nous restons à la maison et nous lisons des livres.",
        "Mon voisin répare son vélo tous les samedis.",
        "Les oiseaux chantent dès que le soleil se lève sur la vallée.",
        "Je voudrais une chambre avec une vue sur la mer, s'il vous plaît.",
    ],
    "es": [
        "La casa de {name} está cerca de la estación de {city}.",
        "Ayer visitamos el museo con mis primos.",
        "Ella prefiere el té con leche y los pasteles de manzana.",
        "Los niños corren en el jardín mientras el perro ladra.",
        "Hay que comprar verduras, queso y una botella de agua.",
        "El zorro duerme debajo de un árbol junto al camino.",
        "Cuando llueve, nos quedamos en casa y leemos libros.",
        "Mi vecino arregla su bicicleta todos los sábados.",
    ],
    "de": [
        "Das Haus von {name} liegt in der Nähe vom Bahnhof in {city}.",
        "Gestern haben wir das Museum besucht.",
        "Sie trinkt lieber Tee mit Milch und isst Apfelkuchen.",
        "Die Kinder laufen im Garten, während der Hund bellt.",
        "Wir müssen Gemüse, Käse und eine Flasche Wasser kaufen.",
        "Der Fuchs schläft unter einem Baum am Wegrand.",
        "Wenn es regnet, bleiben wir zu Hause und lesen Bücher.",
        "Mein Nachbar repariert jeden Samstag sein Fahrrad.",
    ],
    "it": [
        "La casa di {name} è vicino alla stazione di {city}.",
        "Ieri abbiamo visitato il museo con i nostri cugini.",
        "Lei preferisce il tè con il latte e la torta di mele.",
        "I bambini corrono nel giardino mentre il cane abbaia.",
        "La volpe dorme sotto un albero vicino alla strada.",
        "Quando piove restiamo a casa e leggiamo dei libri.",
    ],
}


def training_texts(seed: int, n_per_lang: int = 300):
    """(texts, labels): en and zh documents of a world built from `seed`, and foreign sentences."""
    from world import (
        WorldConfig,
        build_world,
        render_dialog,
        render_knowledge_en,
        render_knowledge_zh,
        render_story,
    )

    rng = random.Random(seed)
    w = build_world(WorldConfig(seed=seed, n_people=200, n_cities=20, n_objects=100))
    texts, labels = [], []
    for _ in range(n_per_lang):
        texts.append(rng.choice([render_dialog, render_knowledge_en, render_story])(rng, w))
        labels.append("en")
        texts.append(render_knowledge_zh(rng, w))
        labels.append("zh")
        sents = rng.choice(list(OTHER_TRAIN.values()))
        p = rng.choice(w.people)
        texts.append(
            " ".join(
                s.format(name=p["name"], city=p["city"]["name"], river=p["city"]["river"][0])
                for s in rng.sample(sents, 4)
            )
        )
        labels.append("other")
    return texts, labels
