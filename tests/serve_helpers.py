"""Shared pieces of the service tests: a fake predictor, an app over prompt `a`, raw ASGI calls."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from hypothesis import HealthCheck
from test_serve import ADMIN_TOKEN, TOKEN

from spul.serve import ServeConfig, ServedPrompt, create_app, prompt_loader

HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


class Fake:
    """A predictor answering `other` for texts with 'generic', failing for texts with 'poison'."""

    def __init__(self, folder: Path, delay: float = 0.0) -> None:
        self.folder = folder
        self.manifest = json.loads((folder / "spul.json").read_text())
        self.delay = delay

    def predict(self, texts, batch_size=32):
        time.sleep(self.delay)
        if any("poison" in t for t in texts):
            raise RuntimeError(f"secret failure in {self.folder}")
        return [
            {
                "label": "other" if "generic" in t else "positive",
                "probabilities": {"negative": 0.2, "positive": 0.8},
            }
            for t in texts
        ]


def app_for(prompts, predictor=None, **settings):
    settings = {"token": TOKEN, "admin_token": ADMIN_TOKEN} | settings
    loader = prompt_loader(prompts["a"], device="cpu", precision="fp32")
    served = ServedPrompt.wrap(predictor or Fake(prompts["a"]), "a")
    return create_app(served, ServeConfig(**settings), loader=loader)


def reloads(app, result="ok"):
    return app.state.service.metrics.reloads.labels(result)._value.get()


def derived(prompts, name, edit=None, corrupt=False):
    """A copy of prompt `a` inside the prompt root, its manifest edited."""
    folder = prompts["a"].parent / name
    if not folder.exists():
        shutil.copytree(prompts["a"], folder)
        manifest = json.loads((folder / "spul.json").read_text())
        if edit is not None:
            edit(manifest)
        (folder / "spul.json").write_text(json.dumps(manifest))
        if corrupt:
            for file in folder.glob("*.safetensors"):
                file.write_bytes(b"not safetensors at all")
    return folder


def finetune_prompt(prompts) -> Path:
    from conftest import toy_data

    from spul.models import load_model
    from spul.pipeline import train_artifact
    from spul.training import TrainConfig

    folder = prompts["a"].parent / "finetuned"
    if not folder.exists():
        lm = load_model(str(prompts["model"]), device="cpu", precision="fp32")
        config = TrainConfig(epochs=1, batch_size=8, lr=1e-3)
        train_artifact("finetune", lm, toy_data(), folder, config=config, show_progress=False)
    return folder


def scope(path="/v1/classify", headers=()):
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-length", b"990000"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def call(app, sc, receive):
    sent = []

    async def send(message):
        sent.append(message)

    await app(sc, receive, send)
    return sent
