"""Forget-set builders (`spul prepare`): entity (spaCy NER), cluster (cosine k-means), ids and regex."""

from spul.data.builders.cluster import (
    ClusterRule,
    CosineKMeans,
    Embedder,
    cluster_selector,
    sentence_embedder,
)
from spul.data.builders.common import MANIFEST, Inputs, Rows, Selection, pool_resplit, prepare, read_inputs
from spul.data.builders.entity import EntityRule, PeopleFinder, entity_selector, name_key, spacy_people
from spul.data.builders.prepare import (
    SCENARIOS,
    Common,
    Scenario,
    prepare_cluster,
    prepare_entity,
    prepare_ids,
    prepare_regex,
    prepare_scenario,
)
from spul.data.builders.simple import id_selector, rule_selector

__all__ = [
    "MANIFEST",
    "SCENARIOS",
    "ClusterRule",
    "Common",
    "CosineKMeans",
    "Embedder",
    "EntityRule",
    "Inputs",
    "PeopleFinder",
    "Rows",
    "Scenario",
    "Selection",
    "cluster_selector",
    "entity_selector",
    "id_selector",
    "name_key",
    "pool_resplit",
    "prepare",
    "prepare_cluster",
    "prepare_entity",
    "prepare_ids",
    "prepare_regex",
    "prepare_scenario",
    "read_inputs",
    "rule_selector",
    "sentence_embedder",
    "spacy_people",
]
