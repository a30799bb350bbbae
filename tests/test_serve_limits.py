"""Attacks on the service: limits before any work is done, and the server's lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time

import pytest
from fastapi.testclient import TestClient
from serve_helpers import Fake, app_for, call, finetune_prompt, reloads, scope
from test_serve import AUTH, TOKEN, _with_lifespan, classify, prompts, unlearned
from typer.testing import CliRunner

from spul.cli import app as cli
from spul.serve.auth import ADMIN_TOKEN_ENV, TOKEN_ENV

__all__ = ["prompts", "unlearned"]  # module-scoped fixtures shared with test_serve


# -- limits before work --------------------------------------------------------------------------


def test_authentication_comes_before_the_body(prompts):
    app = app_for(prompts)
    reads = []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    sent = asyncio.run(call(app, scope(), receive))
    assert sent[0]["status"] == 401 and reads == []
    with TestClient(app) as client:
        assert client.post("/v1/classify", content=b"{not json").status_code == 401


def test_a_stalled_body_gets_408_and_an_abort_is_counted_as_aborted(prompts):
    app = app_for(prompts, body_timeout_s=0.3)
    auth = ((b"authorization", f"Bearer {TOKEN}".encode()),)

    async def stall():  # Content-Length says more than ever comes
        if not hasattr(stall, "sent"):
            stall.sent = True
            return {"type": "http.request", "body": b'{"texts": [', "more_body": True}
        await asyncio.Event().wait()

    async def gone():
        return {"type": "http.disconnect"}

    start = time.monotonic()
    sent = asyncio.run(call(app, scope(headers=auth), stall))
    assert sent[0]["status"] == 408 and time.monotonic() - start < 5
    asyncio.run(call(app, scope(headers=auth), gone))
    text = app.state.service.metrics.render().decode()
    assert 'code="aborted",route="/v1/classify"} 1.0' in text and 'code="500"' not in text


def test_a_huge_bad_body_gets_a_small_fast_422(prompts):
    body = b'{"texts": [' + b",".join([b"1"] * 300_000) + b"]}"
    deep = b'{"texts": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with TestClient(app_for(prompts)) as client:
        start = time.monotonic()
        numbers = client.post("/v1/classify", content=body, headers=AUTH)
        took = time.monotonic() - start
        nested = client.post("/v1/classify", content=deep, headers=AUTH)
    assert numbers.status_code == 422 and len(numbers.content) < 300 and took < 3
    assert numbers.json()["detail"] == "300000 texts in one request; the limit is 64"
    assert nested.status_code == 422 and len(nested.content) < 300


def test_docs_are_off_by_default_and_never_from_a_cdn(prompts):
    with TestClient(app_for(prompts)) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers=AUTH).status_code == 404
    with TestClient(app_for(prompts, docs=True)) as client:
        assert client.get("/openapi.json", headers=AUTH).status_code == 200
        assert client.get("/docs", headers=AUTH).status_code == 404


def test_too_many_queued_texts_get_503(prompts):
    app = app_for(prompts, predictor=Fake(prompts["a"], delay=0.3), max_queued_texts=4, max_texts=4)

    async def work(client):
        return await asyncio.gather(*(classify(client, ["one", "two"]) for _ in range(4)))

    codes = sorted(r.status_code for r in asyncio.run(_with_lifespan(app, work)))
    assert codes == [200, 200, 503, 503]


# -- lifecycle -----------------------------------------------------------------------------------


@pytest.fixture
def keep_sighup():
    """Restore the SIGHUP handler after a test that installs one."""
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)


def test_sighup_while_loading_is_queued_and_served_after_start(prompts, unlearned, keep_sighup):
    from spul.serve.server import catch_sighup

    pending = catch_sighup()
    os.kill(os.getpid(), signal.SIGHUP)  # the process survives
    time.sleep(0.05)
    assert pending.is_set()
    app = app_for(prompts, unlearned["a"], reload_on_sighup=True, sighup_pending=pending)

    async def work(client):
        for _ in range(200):
            if reloads(app) == 1:
                return True
            await asyncio.sleep(0.05)
        return False

    assert asyncio.run(_with_lifespan(app, work))


def test_serve_settings_are_checked_before_the_model_loads(prompts, tmp_path, monkeypatch, keep_sighup):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    root = tmp_path / "root"
    root.mkdir()

    def prompt(name, edit=None):
        folder = root / name
        shutil.copytree(prompts["a"], folder)
        manifest = json.loads((folder / "spul.json").read_text())
        manifest["base_model"]["spec"] = str(tmp_path / "no-such-model")  # loading it would fail
        if edit:
            edit(manifest)
        (folder / "spul.json").write_text(json.dumps(manifest))
        return str(folder)

    good = prompt("good")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = [
        (["--prompt", good, "--port", "99999"], "--port 99999: must be 1..65535"),
        (["--prompt", good, "--port", "0"], "must be 1..65535"),
        (["--prompt", good, "--port", str(busy.getsockname()[1])], "cannot bind"),
        (["--prompt", good, "--host", "no such host!"], "--host"),
        (["--prompt", prompt("tpl", lambda m: m["template"].update(text="no slot"))], "{text}"),
        (["--prompt", prompt("word", lambda m: m.update(label_words=["positive"]))], "two distinct"),
        (["--prompt", str(finetune_prompt(prompts))], "applies no unlearning intervention"),
        (["--prompt", good, "--prompt-root", str(tmp_path / "elsewhere")], "folder not found"),
        (["--prompt", good, "--max-queued-texts", "2"], "--max-queued-texts"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["serve", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    same = CliRunner().invoke(cli, ["serve", "--prompt", good, "--port", "8001"])
    assert same.exit_code == 2 and "is the API token" in same.output
    busy.close()
