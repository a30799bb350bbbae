"""Reading tables (CSV, TSV, JSON lines, Parquet; optionally gzipped) into splits and four-split folders."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from spul.data.splits import (
    DEFAULT_GENERIC_WORDS,
    DEFAULT_LABEL_WORDS,
    SPLITS,
    Split,
    UnlearningData,
    location,
)
from spul.errors import DataError

if TYPE_CHECKING:  # pandas is imported only when a file is read
    import pandas as pd

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
TEXT_COLUMNS = ("text", "sentence", "review", "content")
LABEL_COLUMNS = ("label", "labels", "sentiment")
# Integral labels in any format: 1, "1", 1.0 and "1.0" are class 1 in CSV, JSON lines and Parquet alike;
# 1.5, "1e0", true, [1] and nulls are errors.
_INT = re.compile(r"[+-]?\d+(?:\.0*)?")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def table_format(path: str | Path) -> tuple[str, bool]:
    """The format of `path` from its extension, and whether it is gzipped; DataError if unsupported."""
    name = Path(path).name.lower()
    gz = name.endswith(".gz")
    stem = name[:-3] if gz else name
    ext = stem.rsplit(".", 1)[-1] if "." in stem else ""
    if ext not in FORMATS or (gz and ext == "parquet"):
        supported = ", ".join(f".{f}" for f in FORMATS)
        raise DataError(
            f"{path}: unsupported file type; supported: {supported} (each optionally .gz, except parquet)"
        )
    return ext, gz


def line_offset(path: str | Path) -> int | None:
    """File line of data row r is r + offset: 1 for CSV/TSV (header), 0 for JSON lines, None otherwise."""
    ext, _ = table_format(path)
    return {"csv": 1, "tsv": 1, "jsonl": 0, "json": 0}.get(ext)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table with every CSV/TSV cell as verbatim text (no NA conversion); DataError on bad input."""
    import pandas as pd

    path = Path(path)
    ext, gz = table_format(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if ext == "parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    raw = _read_bytes(path, gz)
    text = _decode(raw, path, "\t" if ext == "tsv" else ",", header=ext in ("csv", "tsv"))
    if ext in ("jsonl", "json"):
        return _parse_json_lines(text, path)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep="\t" if ext == "tsv" else ",",
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
        )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: file is empty (expected a header line)") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: malformed {ext.upper()} ({exc})") from exc
    return _drop_trailing_blank_rows(frame, _blank_tail(text))


def _read_bytes(path: Path, gz: bool) -> bytes:
    """The file's bytes, decompressed when gzipped."""
    try:
        return gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from exc


def _decode(raw: bytes, path: Path, sep: str, header: bool) -> str:
    """Decode UTF-8 (a BOM is allowed); on bad bytes name the data row and line of the first one."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, line_start) + 1
        byte = raw[exc.start : exc.start + 1].hex()
        problem = f"not valid UTF-8 (byte 0x{byte}); re-save the file as UTF-8"
        if not header:  # JSON lines: one record per line
            raise DataError(f"{location(str(path), line, 0)}: {problem}") from exc
        records = _count_records(raw[:line_start].decode("utf-8-sig", errors="replace"), sep)
        if records is None or records < 1:
            raise DataError(f"{path}, line {line}: {problem}") from exc
        raise DataError(f"{location(str(path), records, 1)}: {problem}") from exc


def _count_records(text: str, sep: str) -> int | None:
    """Number of complete CSV records in `text` (header included), or None if it ends mid-record."""
    try:
        reader = csv.reader(io.StringIO(text), delimiter=sep, strict=True)
        return sum(1 for _ in reader)
    except csv.Error:
        return None


def _parse_json_lines(text: str, path: Path) -> pd.DataFrame:
    """Parse one JSON object per line (a JSON array of objects is accepted too)."""
    import pandas as pd

    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON ({exc})") from exc
        if not all(isinstance(r, dict) for r in records):
            raise DataError(f"{path}: expected a JSON array of objects")
        for number, record in enumerate(records, start=1):
            _check_unicode(record, f"{path}, row {number}")
        return pd.DataFrame.from_records(records)
    lines = text.rstrip("\r\n").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = "empty line" if not line.strip() else f"malformed JSON ({exc.msg}, column {exc.colno})"
            where = location(str(path), number, 0)
            raise DataError(f"{where}: {problem}; expected one object per line") from exc
        if not isinstance(record, dict):
            where = location(str(path), number, 0)
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "\\ud" in line.lower():  # a surrogate can only come from an escape
            _check_unicode(record, location(str(path), number, 0))
        records.append(record)
    return pd.DataFrame.from_records(records)


def _check_unicode(record: dict, where: str) -> None:
    """DataError when a JSON record holds a lone surrogate (an escape like \\ud800: not valid Unicode)."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: text is not valid Unicode (a lone surrogate escape)") from None


def _blank_tail(text: str) -> int:
    """How many truly blank lines end the file (a row of empty cells such as `,` is not one)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it is no blank line
    count = 0
    while lines and lines[-1].strip("\r") == "":
        lines.pop()
        count += 1
    return count


def _drop_trailing_blank_rows(frame: pd.DataFrame, blank_lines: int) -> pd.DataFrame:
    """Remove the empty rows that the `blank_lines` blank lines at the end of a CSV produce (only those:
    a row of empty cells is a row, and is refused later as an empty text)."""
    end = len(frame)
    while end > 0 and len(frame) - end < blank_lines and all(str(v) == "" for v in frame.iloc[end - 1]):
        end -= 1
    return frame.iloc[:end] if end < len(frame) else frame


def _find_column(
    frame: pd.DataFrame, given: str | None, candidates: Sequence[str], what: str, source: str
) -> str:
    """The column named `given`, else the first of `candidates` present (case-insensitive)."""
    columns = {str(c).strip().lower(): c for c in frame.columns}
    wanted = [given] if given else list(candidates)
    for name in wanted:
        if name.strip().lower() in columns:
            return columns[name.strip().lower()]
    found = ", ".join(map(str, frame.columns)) or "none"
    looked = f"column {given!r}" if given else f"one of {', '.join(candidates)}"
    raise DataError(f"{source}: no {what} column (looked for {looked}; columns found: {found})")


def _label_index(value: object, words: dict[str, int]) -> int | None:
    """Map a raw label (integral number, integral string or label word) to its class index, or None."""
    import numpy as np

    if isinstance(value, np.generic) and np.ndim(value) == 0:  # numpy scalar (not an array)
        value = value.item()
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        key = value.strip().lower()
        if key in words:
            return words[key]
        if _INT.fullmatch(key):
            return int(key.split(".")[0])
    return None  # lists, arrays, dicts: never unwrapped


def _bad_text(text: object) -> str | None:
    """Why `text` is not a usable text (None if it is): not a string, empty, or not valid Unicode."""
    if not isinstance(text, str):
        kind = "missing" if text is None or text != text else f"a {type(text).__name__}, not a string"
        return f"text is {kind}"
    if not text.strip():
        return "empty text"
    if _SURROGATE.search(text):
        return "text is not valid Unicode (a lone surrogate)"
    return None


def table_to_split(
    df: pd.DataFrame,
    path: str | Path,
    name: str,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    text_column: str | None = None,
    label_column: str | None = None,
    line_offset: int | None = 1,
) -> Split:
    """Build a split from a table: texts kept verbatim, labels as ints, label words or int-like strings."""
    source = str(path)
    text_col = _find_column(df, text_column, TEXT_COLUMNS, "text", source)
    label_col = _find_column(df, label_column, LABEL_COLUMNS, "label", source)
    words = {w.strip().lower(): i for i, w in enumerate(label_words)}
    allowed = f"0..{len(label_words) - 1} or {', '.join(label_words)}"
    texts: list[str] = []
    labels: list[int] = []
    cache: dict[tuple, int | None] = {}
    pairs = zip(df[text_col].tolist(), df[label_col].tolist(), strict=True)
    for row, (text, raw) in enumerate(pairs, start=1):
        problem = _bad_text(text)
        if problem is not None:
            raise DataError(f"{location(source, row, line_offset)}: {problem} in column {text_col!r}")
        key = (type(raw), raw) if isinstance(raw, (str, int, float)) else None
        if key is None or key not in cache:
            label = _label_index(raw, words)
            if key is not None:
                cache[key] = label
        else:
            label = cache[key]
        if label is None or not 0 <= label < len(label_words):
            shown = repr(raw.tolist() if hasattr(raw, "tolist") else raw)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise DataError(
                f"{location(source, row, line_offset)}: label {shown} in column {label_col!r} "
                f"is not in the label set (allowed: {allowed}; integral numbers, no lists)"
            )
        texts.append(text)
        labels.append(label)
    return Split(name=name, texts=texts, labels=labels, source=source, line_offset=line_offset)


def read_split(
    path: str | Path,
    name: str,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    text_column: str | None = None,
    label_column: str | None = None,
) -> Split:
    """Read one file into a split named `name`."""
    frame = read_table(path)
    return table_to_split(frame, path, name, label_words, text_column, label_column, line_offset(path))


def candidate_files(folder: Path, split: str) -> list[Path]:
    """The file names a split may have in a folder: `<split>.<ext>`, optionally `.gz` (not parquet)."""
    names = [f"{split}.{ext}" for ext in FORMATS]
    names += [f"{split}.{ext}.gz" for ext in FORMATS if ext != "parquet"]
    return [folder / n for n in names]


def load_folder(
    folder: str | Path,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    generic_words: Sequence[str] = DEFAULT_GENERIC_WORDS,
    text_column: str | None = None,
    label_column: str | None = None,
    *,
    name: str | None = None,
    strict_overlap: bool = True,
) -> UnlearningData:
    """Load a folder holding the four split files (`train_retain.csv`, ...) and validate it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    found: dict[str, Path] = {}
    missing = []
    for split in SPLITS:
        present = [p for p in candidate_files(folder, split) if p.is_file()]
        if len(present) > 1:
            names = ", ".join(p.name for p in present)
            raise DataError(f"{folder}: several files for split {split}: {names}")
        if present:
            found[split] = present[0]
        else:
            missing.append(split)
    if missing:
        looked = ", ".join(p.name for p in candidate_files(folder, missing[0]))
        raise DataError(
            f"{folder}: missing split file(s) for {', '.join(missing)} "
            f"(looked for {looked}{', ...' if len(missing) > 1 else ''})"
        )
    splits = {s: read_split(p, s, label_words, text_column, label_column) for s, p in found.items()}
    data = UnlearningData(
        splits=splits,
        label_words=tuple(label_words),
        generic_words=tuple(generic_words),
        name=name or folder.name,
    )
    return data.validate(strict_overlap=strict_overlap)
