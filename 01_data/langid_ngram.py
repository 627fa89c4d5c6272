"""Language identification: a character n-gram naive-Bayes classifier, written from scratch.

Model. A document is a bag of character n-grams (n = 1..3 of the lowercased text). Naive Bayes
assumes the n-grams are independent given the language L, so

    log P(L | doc) = log P(L) + sum over n-grams g in doc of log P(g | L) + const,
    P(g | L) = (count(g, L) + alpha) / (total(L) + alpha * V)          (add-alpha smoothing)

and we predict the L with the largest score. N-grams are hashed into V = 2^18 buckets with a
polynomial hash computed by numpy over the code points, so training and scoring are a few vector
operations per document instead of a Python loop per n-gram.

Classes: "en", "zh" and "other". It is trained on English and Chinese documents of a world built
from a different seed than the corpus, plus everyday English and Chinese sentences written for it
(not by the generator), and for "other" on sentences in nine languages (French, Spanish, German,
Italian, Portuguese, Dutch, Swedish, Polish, Indonesian) that differ from the ones noise_inject.py
injects. On real web text you would train on real labelled text
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
    "pt": [
        "A casa de {name} fica perto da estação de {city}.",
        "Ontem fomos ao museu com os nossos primos.",
        "Ela prefere chá com leite e bolo de maçã.",
        "As crianças correm no quintal enquanto o cachorro late.",
        "Precisamos comprar legumes, queijo e uma garrafa de água.",
        "A raposa dorme debaixo de uma árvore ao lado da estrada.",
        "Quando chove, ficamos em casa e lemos livros.",
        "O meu vizinho conserta a bicicleta todos os sábados.",
        "Não sei se ele vai chegar a tempo para o almoço.",
        "Os pássaros cantam quando o sol nasce sobre o vale.",
    ],
    "nl": [
        "Het huis van {name} staat vlak bij het station van {city}.",
        "Gisteren zijn we met onze neven naar het museum geweest.",
        "Zij drinkt liever thee met melk en eet appeltaart.",
        "De kinderen rennen door de tuin terwijl de hond blaft.",
        "We moeten groenten, kaas en een fles water kopen.",
        "De vos slaapt onder een boom naast het pad.",
        "Als het regent, blijven we thuis en lezen we boeken.",
        "Mijn buurman repareert elke zaterdag zijn fiets.",
        "Ik weet niet of hij op tijd is voor het eten.",
        "De vogels zingen zodra de zon boven het dal opkomt.",
    ],
    "sv": [
        "Huset där {name} bor ligger nära stationen i {city}.",
        "Igår besökte vi museet med våra kusiner.",
        "Barnen springer i trädgården medan hunden skäller.",
        "Vi måste köpa grönsaker, ost och en flaska vatten.",
        "När det regnar stannar vi hemma och läser böcker.",
    ],
    "pl": [
        "Dom, w którym mieszka {name}, stoi blisko dworca w {city}.",
        "Wczoraj odwiedziliśmy muzeum razem z kuzynami.",
        "Dzieci biegają po ogrodzie, a pies szczeka.",
        "Musimy kupić warzywa, ser i butelkę wody.",
        "Kiedy pada deszcz, zostajemy w domu i czytamy książki.",
    ],
    "id": [
        "Rumah {name} dekat dengan stasiun kereta di {city}.",
        "Kemarin kami mengunjungi museum bersama sepupu kami.",
        "Anak-anak berlari di kebun sementara anjing menggonggong.",
        "Kita harus membeli sayur, keju, dan sebotol air.",
        "Kalau hujan, kami tinggal di rumah dan membaca buku.",
    ],
}

# English and Chinese written for this classifier, not by the generator: so the model knows more
# of each language than the world's templates (everyday topics the generated world never mentions).
EXTRA_TRAIN = {
    "en": [
        "The weather report says it will rain tomorrow, so bring an umbrella to work.",
        "She opened the laptop, checked her email and answered three messages before lunch.",
        "Our neighbours are painting their fence white this weekend.",
        "If you heat water to a hundred degrees at sea level, it begins to boil.",
        "The committee will publish its decision after the meeting on Thursday.",
        "He could not find his keys, which were in the pocket of his other coat.",
        "Most of the students passed the exam, although the last question was hard.",
        "Please leave your shoes at the door and make yourself at home.",
        "A long queue had formed outside the bakery before it opened.",
        "The train was delayed by twenty minutes because of a signal failure.",
    ],
    "zh": [
        "天气预报说明天会下雨，出门记得带伞。",
        "她打开电脑，查看了邮件，午饭前回复了三封信。",
        "这个周末，邻居们要把篱笆刷成白色。",
        "在海平面上，把水加热到一百度就会沸腾。",
        "委员会将在星期四开会后公布决定。",
        "他找不到钥匙，原来钥匙在另一件外套的口袋里。",
        "大多数学生都通过了考试，虽然最后一道题很难。",
        "请把鞋子放在门口，就像在自己家一样。",
        "面包店还没开门，外面就排起了长队。",
        "由于信号故障，火车晚点了二十分钟。",
    ],
}


def training_texts(seed: int, n_per_lang: int = 300):
    """(texts, labels): en and zh documents of a world built from `seed`, and foreign sentences."""
    from world import WorldConfig, build_world
    from world_dialog import render_dialog
    from world_corpus import render_knowledge_en, render_knowledge_zh, render_story

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
    for lang, sents in EXTRA_TRAIN.items():  # each hand-written sentence a few times, in groups of 3
        for _ in range(n_per_lang // 10):
            texts.append(" ".join(rng.sample(sents, 3)))
            labels.append(lang)
    return texts, labels
