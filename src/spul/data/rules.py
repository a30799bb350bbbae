"""Forget rules: turn a raw labelled train/test dataset into the four unlearning splits."""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from spul.data.sources import read_split
from spul.data.splits import DEFAULT_GENERIC_WORDS, DEFAULT_LABEL_WORDS, Split, UnlearningData
from spul.errors import DataError


class TextRule(ABC):
    """A rule that marks texts to forget by their content; applied to train and test texts alike."""

    @abstractmethod
    def select(self, texts: Sequence[str]) -> list[bool]:
        """One flag per text: True = forget, False = retain."""

    @abstractmethod
    def describe(self) -> str:
        """A short human-readable description for messages and run manifests."""


class RegexRule(TextRule):
    """Forget texts in which a regular expression matches (case-insensitive search)."""

    def __init__(self, pattern: str) -> None:
        try:
            self.regex = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise DataError(f"invalid forget regex {pattern!r}: {exc}") from exc
        self.pattern = pattern

    def select(self, texts: Sequence[str]) -> list[bool]:
        """True where the regex matches anywhere in the text."""
        return [self.regex.search(t) is not None for t in texts]

    def describe(self) -> str:
        """E.g. `regex 'spielberg|sandler'`."""
        return f"regex {self.pattern!r}"


class KeywordRule(RegexRule):
    """Forget texts containing any keyword as a whole word (or phrase), case-insensitive."""

    def __init__(self, keywords: Iterable[str]) -> None:
        self.keywords = [k.strip() for k in keywords if k.strip()]
        if not self.keywords:
            raise DataError("keyword forget rule needs at least one non-empty keyword")
        alternatives = "|".join(r"\s+".join(map(re.escape, k.split())) for k in self.keywords)
        super().__init__(rf"(?<!\w)(?:{alternatives})(?!\w)")
        # cheap substring prefilter (Python's regex engine is slow on long reviews); ASCII words only
        longest = [max(k.split(), key=len).lower() for k in self.keywords]
        self._needles = longest if all(w.isascii() for w in longest) else None

    def select(self, texts: Sequence[str]) -> list[bool]:
        """True where any keyword occurs as a whole word."""
        if self._needles is None:
            return super().select(texts)
        needles = self._needles
        return [
            any(n in low for n in needles) and self.regex.search(t) is not None
            for t, low in ((t, t.lower()) for t in texts)
        ]

    def describe(self) -> str:
        """E.g. `keywords ['sandler', 'de niro']`."""
        return f"keywords {self.keywords}"


@functools.lru_cache(maxsize=1 << 17)  # the same rows are hashed once per request and per split
def text_hash(text: str) -> str:
    """sha256 of a text, whitespace-trimmed and NFC-normalised (how requests and data rows are matched)."""
    return hashlib.sha256(unicodedata.normalize("NFC", text.strip()).encode("utf-8")).hexdigest()


class HashRule(TextRule):
    """Forget texts whose `text_hash` is one of the given hashes."""

    def __init__(self, hashes: Iterable[str]) -> None:
        self.hashes = set(hashes)

    def select(self, texts: Sequence[str]) -> list[bool]:
        """True where the text's hash was requested."""
        return [text_hash(t) in self.hashes for t in texts]

    def describe(self) -> str:
        """E.g. `3 text hashes`."""
        return f"{len(self.hashes)} text hashes"


class UnionRule(TextRule):
    """Forget a text when any of the rules selects it (e.g. every request of a deletion ledger)."""

    def __init__(self, rules: Sequence[TextRule], names: Sequence[str]) -> None:
        self.rules, self.names = list(rules), list(names)

    def select(self, texts: Sequence[str]) -> list[bool]:
        """True where any rule matches."""
        flags = [False] * len(texts)
        for rule in self.rules:
            flags = [a or b for a, b in zip(flags, rule.select(texts), strict=True)]
        return flags

    def describe(self) -> str:
        """E.g. `deletion requests req-0001, req-0002`."""
        return f"deletion requests {', '.join(self.names)}"


def read_lines(file: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (DataError naming the file when it is missing or not UTF-8)."""
    path = Path(file)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8") from exc


def read_ids(ids: Iterable[int] | str | Path) -> list[int]:
    """Row ids from a list, or from a text file with one id per line (blank lines, `#` comments skipped)."""
    if not isinstance(ids, (str, Path)):
        return [_as_id(v, "forget ids") for v in ids]
    path = Path(ids)
    lines = read_lines(path)
    result = []
    for number, line in enumerate(lines, start=1):
        value = line.split("#", 1)[0].strip()
        if value:
            result.append(_as_id(value, f"{path}, line {number}"))
    return result


def _as_id(value: object, where: str) -> int:
    """One non-negative integer id."""
    try:
        number = int(value) if not isinstance(value, bool) else -1
    except (TypeError, ValueError):
        number = -1
    if number < 0 or (isinstance(value, float) and not value.is_integer()):
        raise DataError(f"{where}: {value!r} is not a row id (a non-negative integer)")
    return number


@dataclass
class IdRule:
    """Forget the given 0-based data rows of the train file (and of the test file if `test_ids` given)."""

    train_ids: list[int]
    test_ids: list[int] | None = None

    @classmethod
    def load(
        cls, train: Iterable[int] | str | Path, test: Iterable[int] | str | Path | None = None
    ) -> IdRule:
        """Ids from lists or text files (one id per line)."""
        return cls(read_ids(train), None if test is None else read_ids(test))

    def mask(self, ids: list[int] | None, split: Split) -> list[bool]:
        """Flags for `split`; DataError for an id past its last row."""
        flags = [False] * len(split)
        for i in ids or []:
            if i >= len(split):
                raise DataError(
                    f"forget id {i} out of range: {split.source} has {len(split)} data rows "
                    f"(ids are 0-based, so 0..{len(split) - 1})"
                )
            flags[i] = True
        return flags

    def describe(self) -> str:
        """E.g. `ids (12 train, 3 test)`."""
        return f"ids ({len(set(self.train_ids))} train, {len(set(self.test_ids or []))} test)"


ForgetRule = TextRule | IdRule


def make_rule(
    *,
    regex: str | None = None,
    keywords: Iterable[str] | None = None,
    ids: Iterable[int] | str | Path | None = None,
    test_ids: Iterable[int] | str | Path | None = None,
) -> ForgetRule:
    """Build exactly one forget rule from command-line style options."""
    given = [name for name, v in (("regex", regex), ("keywords", keywords), ("ids", ids)) if v is not None]
    if len(given) != 1:
        raise DataError(f"give exactly one forget rule (regex, keywords or ids), got {given or 'none'}")
    if test_ids is not None and ids is None:
        raise DataError("test ids need train ids too")
    if regex is not None:
        return RegexRule(regex)
    if keywords is not None:
        return KeywordRule([keywords] if isinstance(keywords, str) else keywords)
    return IdRule.load(ids, test_ids)


def rule_from(regex: str | None = None, keywords: Iterable[str] | None = None) -> ForgetRule | None:
    """The forget rule given on a command line (`--regex` or `--keywords`), None when neither is."""
    if not regex and not keywords:
        return None
    return make_rule(regex=regex, keywords=keywords)


def apply_rule(
    train: Split,
    test: Split,
    rule: ForgetRule,
    *,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    generic_words: Sequence[str] = DEFAULT_GENERIC_WORDS,
    name: str = "data",
    strict_overlap: bool = True,
) -> UnlearningData:
    """Split raw train/test data into forget (rule matches) and retain (the rest), then validate."""
    if isinstance(rule, IdRule):
        train_mask, test_mask = rule.mask(rule.train_ids, train), rule.mask(rule.test_ids, test)
    elif isinstance(rule, TextRule):
        train_mask, test_mask = rule.select(train.texts), rule.select(test.texts)
    else:
        raise TypeError(f"not a forget rule: {rule!r}")
    splits = {}
    for part, mask in (("train", train_mask), ("test", test_mask)):
        split = train if part == "train" else test
        forget = [i for i, m in enumerate(mask) if m]
        retain = [i for i, m in enumerate(mask) if not m]
        if not forget:
            hint = " (give test ids too)" if isinstance(rule, IdRule) and part == "test" else ""
            raise DataError(
                f"forget rule {rule.describe()} selects no rows of {split.source}: "
                f"{part}_forget would be empty{hint}"
            )
        if not retain:
            raise DataError(
                f"forget rule {rule.describe()} selects every row of {split.source}: "
                f"{part}_retain would be empty"
            )
        splits[f"{part}_retain"] = _renamed(split.subset(retain), f"{part}_retain")
        splits[f"{part}_forget"] = _renamed(split.subset(forget), f"{part}_forget")
    order = ("train_retain", "train_forget", "test_retain", "test_forget")
    data = UnlearningData(
        splits={k: splits[k] for k in order},
        label_words=tuple(label_words),
        generic_words=tuple(generic_words),
        name=name,
    )
    return data.validate(strict_overlap=strict_overlap)


def _renamed(split: Split, name: str) -> Split:
    """The same split under another name."""
    return replace(split, name=name)


# Its parameters mirror sources.load_folder on purpose: both loaders take the same options.
def load_with_rule(
    train_path: str | Path,
    test_path: str | Path,
    rule: ForgetRule,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    generic_words: Sequence[str] = DEFAULT_GENERIC_WORDS,
    text_column: str | None = None,
    label_column: str | None = None,
    *,
    name: str | None = None,
    strict_overlap: bool = True,
) -> UnlearningData:
    """Load a raw labelled train and test file and split each by `rule` into forget and retain."""
    train = read_split(train_path, "train", label_words, text_column, label_column)
    test = read_split(test_path, "test", label_words, text_column, label_column)
    return apply_rule(
        train,
        test,
        rule,
        label_words=label_words,
        generic_words=generic_words,
        name=name or Path(train_path).parent.name or "data",
        strict_overlap=strict_overlap,
    )
