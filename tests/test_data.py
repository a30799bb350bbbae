"""Data loading: formats, bad inputs with file/row messages, validation warnings, sampling, rules, presets."""

from __future__ import annotations

import gzip
import json
import sys
import types

import pandas as pd
import pytest

from spul.data import (
    SPLITS,
    IdRule,
    KeywordRule,
    RegexRule,
    Split,
    UnlearningData,
    load_data,
    load_folder,
    load_with_rule,
    make_rule,
    read_table,
    table_to_split,
)
from spul.errors import DataError

ROWS = {
    "train_retain": [("a fine film", 1), ("dull and slow", 0), ("NA", 1), ("null", 0), ("great fun", 1)],
    "train_forget": [("spielberg is great", 1), ("sandler bores", 0), ("spielberg again", 0)],
    "test_retain": [("lovely", 1), ("awful", 0), ("so so bad", 0)],
    "test_forget": [("sandler rules", 1), ("spielberg fails", 0)],
}


def write_csv(path, rows, header=("text", "label")):
    """Write rows with pandas (minimal quoting) under `header`."""
    pd.DataFrame(rows, columns=list(header)).to_csv(path, index=False)
    return path


def write_folder(folder, rows=ROWS):
    """The four split CSV files in `folder`."""
    folder.mkdir(exist_ok=True)
    for name, split_rows in rows.items():
        write_csv(folder / f"{name}.csv", split_rows)
    return folder


def write_raw(tmp_path, n_train=8, n_test=4):
    """Raw train/test CSVs where some texts name spielberg."""
    train = [(f"spielberg film {i}" if i % 3 == 0 else f"plain film {i}", i % 2) for i in range(n_train)]
    test = [(f"Spielberg's movie {i}" if i % 2 == 0 else f"other movie {i}", i % 2) for i in range(n_test)]
    return write_csv(tmp_path / "train.csv", train), write_csv(tmp_path / "test.csv", test)


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl", "json", "parquet", "csv.gz", "tsv.gz", "jsonl.gz"])
def test_each_format_round_trips(tmp_path, ext):
    rows = ROWS["train_retain"] + [('quote " and, comma', 0), ("multi\nline", 1), ("  padded  ", 0)]
    frame = pd.DataFrame(rows, columns=["text", "label"])
    path = tmp_path / f"t.{ext}"
    base = ext.removesuffix(".gz")
    if base == "csv":
        data = frame.to_csv(index=False).encode()
    elif base == "tsv":
        data = frame.to_csv(index=False, sep="\t").encode()
    elif base in ("jsonl", "json"):
        data = "".join(json.dumps(r) + "\n" for r in frame.to_dict("records")).encode()
    if base == "parquet":
        frame.to_parquet(path)
    else:
        path.write_bytes(gzip.compress(data) if ext.endswith(".gz") else data)
    table = read_table(path)
    assert table["text"].tolist() == [t for t, _ in rows]  # verbatim, "NA"/"null" stay text
    assert [int(v) for v in table["label"].tolist()] == [label for _, label in rows]


def test_folder_of_mixed_formats_and_label_words(tmp_path):
    folder = write_folder(tmp_path / "d")
    (folder / "test_forget.csv").unlink()
    lines = [
        json.dumps({"sentence": t, "sentiment": ["NEGATIVE", "Positive"][y]}) for t, y in ROWS["test_forget"]
    ]
    (folder / "test_forget.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    data = load_folder(folder)
    assert data.sizes() == {name: len(rows) for name, rows in ROWS.items()}
    assert data.test_forget.labels == [1, 0]
    assert data.test_forget.texts == ["sandler rules", "spielberg fails"]
    assert data.train_retain.texts[2:4] == ["NA", "null"]


def test_string_labels_custom_words_and_int_like(tmp_path):
    path = write_csv(tmp_path / "t.csv", [("a", "Bad"), ("b", " good "), ("c", "2"), ("d", "1")])
    split = table_to_split(read_table(path), path, "x", label_words=("bad", "good", "great"))
    assert split.labels == [0, 1, 2, 1]
    assert split.rows == [1, 2, 3, 4]


# ---------------------------------------------------------------- bad inputs


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_table(tmp_path / "nope.csv")


def test_unknown_extension_lists_formats(tmp_path):
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type; supported: \.csv, \.tsv"):
        read_table(tmp_path / "t.xlsx")


def test_missing_split_file(tmp_path):
    folder = write_folder(tmp_path / "d")
    (folder / "test_forget.csv").unlink()
    with pytest.raises(
        DataError, match=r"missing split file\(s\) for test_forget \(looked for test_forget.csv"
    ):
        load_folder(folder)


def test_missing_column_names_file_and_columns(tmp_path):
    folder = write_folder(tmp_path / "d")
    write_csv(folder / "train_forget.csv", [("x", 1)], header=("body", "label"))
    with pytest.raises(DataError, match=r"train_forget.csv: no text column .*columns found: body, label"):
        load_folder(folder)


def test_empty_text_names_row(tmp_path):
    folder = write_folder(tmp_path / "d")
    write_csv(folder / "test_retain.csv", [("ok", 1), ("   ", 0)])
    with pytest.raises(DataError, match=r"test_retain.csv, row 2 \(line 3\): empty text"):
        load_folder(folder)


def test_label_outside_label_set(tmp_path):
    folder = write_folder(tmp_path / "d")
    write_csv(folder / "train_retain.csv", [("ok", 1), ("fine", "neutral"), ("x", 0)])
    with pytest.raises(
        DataError, match=r"train_retain.csv, row 2 \(line 3\): label 'neutral' .*0..1 or negative"
    ):
        load_folder(folder)
    write_csv(folder / "train_retain.csv", [("ok", 1), ("x", 0), ("fine", 2)])
    with pytest.raises(DataError, match=r"row 3 \(line 4\): label '2'"):
        load_folder(folder)


def test_non_utf8_bytes_name_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'text,label\nfine,1\n"two\nlines",0\ncaf\xe9,1\n')
    with pytest.raises(DataError, match=r"t.csv, row 3 \(line 4\): not valid UTF-8 \(byte 0xe9\)"):
        read_table(path)
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"text": "a", "label": 1}\n{"text": "caf\xe9", "label": 1}\n')
    with pytest.raises(DataError, match=r"t.jsonl, row 2 \(line 2\): not valid UTF-8"):
        read_table(path)


def test_malformed_csv_and_json(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,1\nb,0,extra\n")
    with pytest.raises(DataError, match=r"t.csv: malformed CSV .*line 3"):
        read_table(path)
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"t.jsonl, row 2 \(line 2\): malformed JSON"):
        read_table(path)


def test_empty_split(tmp_path):
    folder = write_folder(tmp_path / "d")
    write_csv(folder / "test_forget.csv", [])
    with pytest.raises(DataError, match=r"split test_forget \(.*test_forget.csv\) is empty"):
        load_folder(folder)


def test_same_text_in_forget_and_retain_is_an_error(tmp_path):
    rows = dict(ROWS, test_retain=[("lovely", 1), ("sandler bores", 0)])
    folder = write_folder(tmp_path / "d", rows)
    with pytest.raises(DataError) as info:
        load_folder(folder)
    message = str(info.value)
    assert "ill-defined" in message
    assert "train_forget.csv, row 2 (line 3)" in message
    assert "test_retain.csv, row 2 (line 3)" in message
    data = load_folder(folder, strict_overlap=False)
    assert any("forget split and a retain split" in w for w in data.warnings)


def test_duplicates_are_warnings_not_dropped(tmp_path):
    rows = dict(
        ROWS,
        train_retain=ROWS["train_retain"] + [("a fine film", 0), ("a fine film", 1)],
        test_retain=ROWS["test_retain"] + [("great fun", 1)],
    )
    data = load_folder(write_folder(tmp_path / "d", rows))
    assert len(data.train_retain) == 7
    assert any(
        "train_retain: 2 duplicate row(s)" in w and "1 with conflicting labels" in w for w in data.warnings
    )
    assert any("1 text(s) occur in both train_retain and test_retain" in w for w in data.warnings)


def test_generic_words_must_differ_from_label_words(tmp_path):
    with pytest.raises(DataError, match="generic words"):
        load_folder(write_folder(tmp_path / "d"), generic_words=("Positive", "unknown"))


# ---------------------------------------------------------------- splits, fingerprint, sampling


def make_data(n=100):
    """Synthetic data with n rows per split."""
    splits = {
        s: Split(s, [f"{s} text {i}" for i in range(n)], [i % 2 for i in range(n)], f"{s}.csv")
        for s in SPLITS
    }
    return UnlearningData(splits, name="synthetic").validate()


def test_fingerprint_is_hash_only_and_order_sensitive():
    data = make_data(10)
    fp = data.fingerprint()
    assert fp["splits"]["train_forget"]["size"] == 10
    assert "text" not in json.dumps(fp)
    split = data.train_forget
    assert split.fingerprint() == split.subset(range(10)).fingerprint()
    assert split.fingerprint() != split.subset(reversed(range(10))).fingerprint()


def test_tau_and_limit_are_deterministic_and_keep_order():
    data = make_data(100)
    a = data.sample(tau=0.3, limit={"train_retain": 20, "test_retain": 7}, seed=5)
    b = data.sample(tau=0.3, limit={"train_retain": 20, "test_retain": 7}, seed=5)
    c = data.sample(tau=0.3, seed=6)
    assert a.sizes() == {"train_retain": 20, "train_forget": 30, "test_retain": 7, "test_forget": 100}
    assert a.fingerprint() == b.fingerprint()
    assert a.train_forget.texts != c.train_forget.texts
    assert a.train_retain.rows == sorted(a.train_retain.rows)
    assert data.sample(limit=5).sizes() == dict.fromkeys(SPLITS, 5)
    assert data.sample() is data
    with pytest.raises(DataError, match="tau"):
        data.sample(tau=0)
    with pytest.raises(DataError, match="unknown split"):
        data.sample(limit={"train": 3})


# ---------------------------------------------------------------- forget rules


def test_rule_by_regex(tmp_path):
    train, test = write_raw(tmp_path)
    data = load_with_rule(train, test, RegexRule(r"spiel\w+"))
    assert data.train_forget.texts == ["spielberg film 0", "spielberg film 3", "spielberg film 6"]
    assert data.train_forget.rows == [1, 4, 7]
    assert data.test_forget.texts == ["Spielberg's movie 0", "Spielberg's movie 2"]
    assert data.sizes() == {"train_retain": 5, "train_forget": 3, "test_retain": 2, "test_forget": 2}


def test_rule_by_keywords_matches_whole_words(tmp_path):
    rule = KeywordRule(["spielberg", "de niro"])
    texts = ["SPIELBERG!", "spielbergian", "de  niro's best", "denirox", "a de niro"]
    assert rule.select(texts) == [True, False, True, False, True]
    train, test = write_raw(tmp_path)
    assert load_with_rule(train, test, make_rule(keywords=["spielberg"])).sizes()["train_forget"] == 3


def test_rule_by_ids_from_list_and_file(tmp_path):
    train, test = write_raw(tmp_path)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# forget these\n1\n\n2\n")
    data = load_with_rule(train, test, IdRule.load(ids_file, [0]))
    assert data.train_forget.texts == ["plain film 1", "plain film 2"]
    assert data.test_forget.texts == ["Spielberg's movie 0"]
    with pytest.raises(DataError, match=r"forget id 8 out of range: .*train.csv has 8 data rows"):
        load_with_rule(train, test, IdRule([8], [0]))
    with pytest.raises(DataError, match="test_forget would be empty"):
        load_with_rule(train, test, IdRule([1]))


def test_rule_selecting_nothing_is_an_error(tmp_path):
    train, test = write_raw(tmp_path)
    with pytest.raises(DataError, match=r"selects no rows of .*train.csv: train_forget would be empty"):
        load_with_rule(train, test, RegexRule("kubrick"))


# ---------------------------------------------------------------- load_data specs


def test_load_data_folder_file_and_errors(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "d")
    assert load_data(str(folder), limit=2, seed=1).sizes() == dict.fromkeys(SPLITS, 2)
    train, test = write_raw(tmp_path)
    data = load_data(str(train), test_path=test, forget_rule=RegexRule("spielberg"))
    assert data.sizes()["train_forget"] == 3
    with pytest.raises(DataError, match="single file"):
        load_data(str(train))
    with pytest.raises(DataError, match="not found"):
        load_data(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="unknown dataset 'sst3'.*sst2-paper"):
        load_data("sst3")
    monkeypatch.setenv("SPUL_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="needs a forget rule"):
        load_data("imdb")
    with pytest.raises(DataError, match="spul_v3 not found in the data folder"):
        load_data("sst2-paper")


def test_hub_unreachable_or_datasets_missing(monkeypatch):
    monkeypatch.delenv("SPUL_DATA_DIR", raising=False)

    def offline(name):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (offline mode)")

    fake = types.ModuleType("datasets")
    fake.load_dataset = offline
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(
        DataError, match="could not reach the HuggingFace hub for dataset someone/data; pass a local"
    ):
        load_data("someone/data")
    with pytest.raises(DataError, match="karuna-bhaila/Unlearning_Yelp_Polarity; the Yelp retain splits"):
        load_data("yelp-paper")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DataError, match="pip install datasets"):
        load_data("sst2-paper")
    with pytest.raises(DataError, match="pip install datasets.*retain splits are not available offline"):
        load_data("yelp-paper")


def test_hub_four_splits_are_mapped(monkeypatch):
    class FakeSplit:
        def __init__(self, rows):
            self.rows = rows

        def to_pandas(self):
            return pd.DataFrame(self.rows, columns=["text", "label"])

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name: {name.replace("_", "-"): FakeSplit(rows) for name, rows in ROWS.items()}
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data = load_data("someone/data")
    assert data.sizes() == {name: len(rows) for name, rows in ROWS.items()}
    assert data.train_forget.where(1) == "hf:someone/data[train_forget], row 2"


def test_real_paper_sst2(shared_data):
    data = load_data("sst2-paper", data_dir=shared_data)
    assert data.sizes() == {
        "train_retain": 46331,
        "train_forget": 1425,
        "test_retain": 19855,
        "test_forget": 610,
    }
    assert data.label_words == ("negative", "positive")
    assert any("166 text(s) occur in both train_retain and test_retain" in w for w in data.warnings)
    assert not any("forget split and a retain split" in w for w in data.warnings)
    small = load_data("sst2-paper", data_dir=shared_data, tau=0.1, limit={"train_retain": 500}, seed=3)
    assert small.sizes()["train_forget"] == 142
    assert small.sizes()["train_retain"] == 500
