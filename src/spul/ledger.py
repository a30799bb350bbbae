"""Deletion-request ledger: which texts users asked to forget, and which prompt covers each request.

The ledger is one JSON file, written atomically under a lock. A request says what to forget in one of
three ways, all matched against the training data (and the test data, for evaluation) when a prompt is
trained with `spul unlearn --ledger`:

- `texts`: the texts themselves, stored only as sha256 of each whitespace-trimmed, NFC-normalised text
  (never the texts); a data row is forgotten when its text has one of these hashes;
- `regex`: rows in which a regular expression matches (case-insensitive);
- `keywords`: rows containing one of the keywords as a whole word.

The forget set of a run is the union of every request (open and already covered: a new prompt replaces
the old one, so it must cover everything). A request becomes `covered` (with the prompt's path and the
number of rows it matched) only when every training row it matches was trained on; one that matches no
training row stays `open` and is reported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spul.data.presets import pooled_data
from spul.data.rules import HashRule, KeywordRule, RegexRule, TextRule, UnionRule, read_lines, text_hash
from spul.data.selection import Selection
from spul.data.splits import Split, UnlearningData
from spul.errors import SpulError
from spul.io import write_json_atomic
from spul.reporting import report_warnings, warn

__all__ = ["HashRule", "UnionRule", "text_hash"]  # re-exported: requests match rows by these

FORMAT = "spul-ledger/1"
KINDS = ("texts", "regex", "keywords")
STATUSES = ("open", "covered")
_ID = re.compile(r"req-(\d+)")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class DeletionRequest:
    """One request: what to forget (hashes, a regex or keywords), when, and its status."""

    id: str
    created: str
    kind: str
    fingerprint: str  # sha256 of what the request asks for (hashes / pattern / keywords)
    status: str = "open"
    source: str | None = None  # where the texts came from, e.g. the file name
    note: str | None = None
    text_sha256: list[str] | None = None
    pattern: str | None = None
    keywords: list[str] | None = None
    covered_by: dict[str, Any] | None = None  # prompt, date, matched rows

    def rule(self) -> TextRule:
        """The forget rule this request stands for."""
        if self.kind == "texts":
            return HashRule(self.text_sha256 or [])
        if self.kind == "regex":
            return RegexRule(self.pattern or "")
        return KeywordRule(self.keywords or [])

    def describe(self) -> str:
        """One line: what it asks for, without the texts."""
        if self.kind == "texts":
            return f"{len(self.text_sha256 or [])} text(s) by sha256"
        if self.kind == "regex":
            return f"regex {self.pattern!r}"
        return f"keywords {self.keywords}"

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the ledger (unset fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Ledger:
    """The requests of one ledger file, in the order they were added."""

    path: Path
    requests: list[DeletionRequest] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path, *, missing_ok: bool = False) -> Ledger:
        """Read a ledger file (an empty ledger when it does not exist and `missing_ok`)."""
        path = Path(path)
        if not path.is_file():
            if missing_ok:
                return cls(path)
            raise SpulError(f"{path}: ledger not found (create it with `spul requests add --ledger {path}`)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SpulError(f"{path}: not a valid JSON ledger ({err})") from err
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise SpulError(f"{path}: not a spul ledger (expected format {FORMAT!r})")
        requests = []
        for i, item in enumerate(raw.get("requests", [])):
            try:
                request = DeletionRequest(**item)
            except TypeError as err:
                raise SpulError(f"{path}: request {i + 1} is malformed ({err})") from err
            if request.kind not in KINDS or request.status not in STATUSES:
                raise SpulError(
                    f"{path}: request {request.id} has kind {request.kind!r}, status {request.status!r}"
                )
            requests.append(request)
        return cls(path, requests)

    def save(self) -> None:
        """Write the ledger atomically."""
        write_json_atomic(self.path, {"format": FORMAT, "requests": [r.to_json() for r in self.requests]})

    def get(self, request_id: str) -> DeletionRequest:
        """The request with this id (SpulError naming the known ids otherwise)."""
        for request in self.requests:
            if request.id == request_id:
                return request
        known = ", ".join(r.id for r in self.requests) or "none"
        raise SpulError(f"{self.path}: no request {request_id!r} (requests: {known})")

    def add(
        self,
        *,
        texts: Sequence[str] | None = None,
        pattern: str | None = None,
        keywords: Sequence[str] | None = None,
        source: str | None = None,
        note: str | None = None,
    ) -> DeletionRequest:
        """Append a new open request for texts, a regex or keywords (exactly one)."""
        options = (("texts", texts), ("regex", pattern), ("keywords", keywords))
        given = [k for k, v in options if v is not None]
        if len(given) != 1:
            raise SpulError(
                f"a request needs exactly one of texts, a regex or keywords; got {given or 'none'}"
            )
        kind = given[0]
        fields: dict[str, Any] = {}
        if kind == "texts":
            hashes = sorted({text_hash(t) for t in texts if t.strip()})
            if not hashes:
                raise SpulError("the request holds no (non-blank) text")
            fields["text_sha256"], content = hashes, hashes
        elif kind == "regex":
            RegexRule(pattern)  # DataError for an invalid pattern
            fields["pattern"], content = pattern, pattern
        else:
            words = [k.strip() for k in keywords if k.strip()]
            KeywordRule(words)
            fields["keywords"], content = words, sorted(w.lower() for w in words)
        fingerprint = hashlib.sha256(json.dumps([kind, content]).encode()).hexdigest()
        for other in self.requests:
            if other.fingerprint == fingerprint:
                raise SpulError(f"{self.path}: the same request is already there as {other.id}")
        numbers = [int(m.group(1)) for r in self.requests if (m := _ID.fullmatch(r.id))]
        request = DeletionRequest(
            id=f"req-{max(numbers, default=0) + 1:04d}",
            created=now(),
            kind=kind,
            fingerprint=fingerprint,
            source=source,
            note=note,
            **fields,
        )
        self.requests.append(request)
        return request

    def rule(self) -> UnionRule:
        """The union of every request's rule (open and covered alike)."""
        if not self.requests:
            raise SpulError(f"{self.path}: the ledger has no requests; add one with `spul requests add`")
        return UnionRule([r.rule() for r in self.requests], [r.id for r in self.requests])

    def matches(self, split: Split) -> dict[str, int]:
        """How many rows of `split` each request matches."""
        return {r.id: sum(r.rule().select(split.texts)) for r in self.requests}


@contextlib.contextmanager
def locked(path: str | Path, *, missing_ok: bool = False) -> Iterator[Ledger]:
    """Read-modify-write a ledger under an exclusive lock (`<ledger>.lock`), saving on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            ledger = Ledger.load(path, missing_ok=missing_ok)
            yield ledger
            ledger.save()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_texts(file: str | Path) -> list[str]:
    """Texts of a request file: one per line, blank lines skipped."""
    texts = [line for line in read_lines(file) if line.strip()]
    if not texts:
        raise SpulError(f"{file}: no text in the file (one text per line)")
    return texts


def ledger_data(
    ledger: Ledger,
    spec: str,
    *,
    data_dir: str | Path | None = None,
    test_path: str | Path | None = None,
    label_words: Sequence[str] = ("negative", "positive"),
    generic_words: Sequence[str] = ("neutral", "unknown"),
) -> UnlearningData:
    """The four splits with forget = rows matched by any request of the ledger (see `pooled_data`)."""
    return pooled_data(
        ledger.rule(),
        spec,
        origin=str(ledger.path),
        data_dir=data_dir,
        test_path=test_path,
        label_words=label_words,
        generic_words=generic_words,
    )


def ledger_rows(
    selection: Selection,
    *,
    data_dir: str | Path | None = None,
    test_path: str | Path | None = None,
    label_words: Sequence[str] = ("negative", "positive"),
    generic_words: Sequence[str] = ("neutral", "unknown"),
) -> tuple[UnlearningData, UnlearningData, list[str], dict[str, dict[str, int]]]:
    """Training and evaluation rows whose forget set is the requests of `selection.ledger`, the ids of the
    requests this run fully covers and the per-request row counts (SpulError when it covers none)."""
    book = Ledger.load(selection.ledger)
    full = ledger_data(
        book,
        selection.data,
        data_dir=data_dir,
        test_path=test_path,
        label_words=label_words,
        generic_words=generic_words,
    )
    report_warnings(full)
    training, evaluation = selection.draw(full)
    counts = coverage(book, full, training)
    for rid, c in counts.items():
        if c["rows"] == 0:
            warn(f"{rid} matches no training row; it stays open")
        elif c["trained"] < c["rows"]:
            warn(
                f"{rid}: only {c['trained']} of its {c['rows']} training rows are trained on "
                "(--tau / --limit); it stays open"
            )
    ids = covered_ids(counts)
    if not ids:
        raise SpulError(
            f"{selection.ledger}: this run would fully cover no request (drop --tau / a train_forget --limit)"
        )
    return training, evaluation, ids, counts


def coverage(ledger: Ledger, pool: UnlearningData, trained: UnlearningData) -> dict[str, dict[str, int]]:
    """Per request: training rows it matches in the whole data and among the rows actually trained on."""
    available, used = ledger.matches(pool.train_forget), ledger.matches(trained.train_forget)
    return {r.id: {"rows": available[r.id], "trained": used[r.id]} for r in ledger.requests}


def covered_ids(counts: dict[str, dict[str, int]]) -> list[str]:
    """Requests whose every matching training row is trained on (and that match at least one)."""
    return [rid for rid, c in counts.items() if c["rows"] > 0 and c["trained"] == c["rows"]]


def mark_covered(
    path: str | Path, ids: Sequence[str], prompt: str | Path, counts: dict[str, dict[str, int]]
) -> None:
    """Record that `prompt` covers the requests `ids` (re-reading the ledger: later additions are kept)."""
    with locked(path) as ledger:
        date = now()
        for rid in ids:
            request = ledger.get(rid)
            request.status = "covered"
            request.covered_by = {"prompt": str(prompt), "date": date, "rows": counts[rid]["rows"]}
