"""Attacks on the service: roles, what may be served, what responses say, isolation, limits, lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import ADMIN, ADMIN_TOKEN, AUTH, TEXTS, TOKEN, _with_lifespan, classify, prompts, unlearned
from typer.testing import CliRunner

from spul.cli import app as cli
from spul.serve import ServeConfig, ServedPrompt, create_app, prompt_loader
from spul.serve.auth import ADMIN_TOKEN_ENV, TOKEN_ENV

__all__ = ["prompts", "unlearned"]  # module-scoped fixtures shared with test_serve
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


# -- roles ---------------------------------------------------------------------------------------


def test_classify_token_never_changes_what_is_served(prompts, unlearned):
    app = app_for(prompts, unlearned["a"])
    paths = ["/v1/admin/reload", "/v1/admin/reload/", "//v1/admin/reload", "/v1/ADMIN/reload", "/v1/admin"]
    bodies = [{}, {"prompt": str(prompts["b"])}, {"prompt": "b"}, {"prompt": "../serve0/b"}, None]
    tricks = [{}, {"X-Forwarded-For": "127.0.0.1"}, {"Authorization": f"Bearer {TOKEN} {ADMIN_TOKEN}"}]

    @settings(max_examples=60, deadline=None, suppress_health_check=HEALTH)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["POST", "GET", "PUT", "PATCH"]),
                st.sampled_from(paths + ["/v1/classify", "/v1/prompt", "/metrics"]),
                st.sampled_from(bodies),
                st.sampled_from(tricks),
            ),
            min_size=1,
            max_size=6,
        )
    )
    def attack(client, steps):
        for method, path, body, extra in steps:
            headers = AUTH | extra
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code != 200 or path in ("/v1/classify", "/v1/prompt", "/metrics")
        assert client.get("/v1/prompt", headers=AUTH).json()["fingerprint"] == want

    want = ServedPrompt.wrap(unlearned["a"]).info["fingerprint"]
    with TestClient(app) as client:
        attack(client)
        assert reloads(app) == 0 and reloads(app, "failed") == 0
        # the admin token does swap it: the attack above had a working route to miss
        swap = client.post("/v1/admin/reload", json={"prompt": "b"}, headers=ADMIN)
        assert swap.status_code == 200 and swap.json()["current"]["fingerprint"] != want


def test_reload_is_off_without_an_admin_token_but_sighup_rereads(prompts, unlearned):
    app = app_for(prompts, unlearned["a"], admin_token=None)

    async def work(client):
        refused = [await client.post("/v1/admin/reload", json={}, headers=h) for h in (AUTH, {})]
        await app.state.service.reload_on_signal()
        return refused

    refused = asyncio.run(_with_lifespan(app, work))
    assert [r.status_code for r in refused] == [403, 403]
    assert "reload is off" in refused[0].json()["detail"]
    assert reloads(app) == 1


# -- what may be served --------------------------------------------------------------------------


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


def test_reload_refuses_what_may_not_be_served(prompts, unlearned, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(prompts["a"], outside)
    link = prompts["a"].parent / "link-out"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    handmade = prompts["a"].parent / "handmade"
    handmade.mkdir(exist_ok=True)
    base = json.loads((prompts["a"] / "spul.json").read_text())
    claim = {k: base[k] for k in ("format", "template", "label_words", "generic_words", "base_model")}
    (handmade / "spul.json").write_text(
        json.dumps(claim | {"kind": "weights", "method": "ga", "requests": ["r1"]})
    )
    cases = {
        str(finetune_prompt(prompts)): (403, "applies no unlearning intervention"),
        str(outside): (403, "not a prompt folder under the prompt roots"),
        "link-out": (403, "not a prompt folder under the prompt roots"),
        os.path.relpath(outside, prompts["a"].parent): (403, "not a prompt folder under the prompt roots"),
        str(handmade): (403, "claims deletion requests but is not a trained"),
        "no-base": (403, "no base model fingerprint"),
        "one-word": (403, "at least two distinct words"),
        "other-base": (403, "another base model"),
        "corrupt": (422, "could not be loaded"),
        "a\x00b": (403, "not a prompt folder"),
    }
    derived(prompts, "no-base", lambda m: m.pop("base_model"))
    derived(prompts, "one-word", lambda m: m.update(label_words=["positive"]))
    derived(prompts, "other-base", lambda m: m["base_model"].update(fingerprint="0" * 32))
    derived(prompts, "corrupt", corrupt=True)
    app = app_for(prompts, unlearned["a"])
    want = ServedPrompt.wrap(unlearned["a"]).info["fingerprint"]
    with TestClient(app) as client:
        for path, (code, reason) in cases.items():
            response = client.post("/v1/admin/reload", json={"prompt": path}, headers=ADMIN)
            detail = response.json()["detail"]
            assert response.status_code == code and reason in detail, (path, response.text)
            assert "\n" not in detail and "Traceback" not in detail and len(detail) <= 200
            assert classify(client, TEXTS[:1]).json()["prompt"]["fingerprint"] == want
    assert reloads(app) == 0 and reloads(app, "failed") == len(cases)


def test_reload_and_sighup_without_a_path_reread_the_prompt_in_use(prompts, unlearned):
    app = app_for(prompts, unlearned["a"])
    fb = ServedPrompt.wrap(unlearned["b"]).info["fingerprint"]

    async def work(client):
        first = await client.post("/v1/admin/reload", json={"prompt": "b"}, headers=ADMIN)
        again = await client.post("/v1/admin/reload", headers=ADMIN)
        await app.state.service.reload_on_signal()
        return first, again, (await client.get("/v1/prompt", headers=AUTH)).json()

    first, again, info = asyncio.run(_with_lifespan(app, work))
    assert first.json()["current"]["fingerprint"] == fb
    assert again.status_code == 200 and again.json()["current"]["fingerprint"] == fb
    assert info["fingerprint"] == fb and info["id"] == "b"


# -- what a response says ------------------------------------------------------------------------


def test_labels_only_by_default_and_no_server_paths(prompts, unlearned):
    texts = ["a fine movie", "generic words here"]
    with TestClient(app_for(prompts)) as client:
        plain = classify(client, texts)
        info = client.get("/v1/prompt", headers=AUTH)
        swap = client.post("/v1/admin/reload", json={"prompt": "b"}, headers=ADMIN)
        metrics = client.get("/metrics", headers=AUTH)
    assert plain.json()["predictions"] == [{"label": "positive"}, {"label": "other"}]
    root = str(prompts["a"].parent)
    for response in (plain, info, swap, metrics):
        assert response.status_code == 200 and root not in response.text and "/tmp" not in response.text
    assert set(plain.json()["prompt"]) >= {"id", "fingerprint"} and "path" not in plain.json()["prompt"]
    with TestClient(app_for(prompts, return_probabilities=True)) as client:
        shown = classify(client, texts).json()["predictions"]
    assert shown == [
        {"label": "positive", "probabilities": {"negative": 0.2, "positive": 0.8}},
        {"label": "other"},
    ]


# -- isolation -----------------------------------------------------------------------------------


def test_invalid_texts_are_422_naming_the_index(prompts):
    with TestClient(app_for(prompts)) as client:
        post = lambda body: client.post("/v1/classify", content=body, headers=AUTH)  # noqa: E731
        surrogate = post(b'{"texts": ["fine", "\\ud800"]}')
        control = post(b'{"texts": ["nul \\u0000 here"]}')
        number = post(b'{"texts": ["fine", 5]}')
        ok = classify(client, ["tab\tand\nnewline\r\n"])
    assert surrogate.status_code == 422 and surrogate.json()["detail"].startswith(
        "texts[1] contains a lone surrogate"
    )
    assert control.status_code == 422 and control.json()["detail"].startswith(
        "texts[0] has a control character"
    )
    assert number.status_code == 422 and number.json()["detail"] == "texts[1] is not a string"
    assert ok.status_code == 200


def test_a_failing_text_fails_only_its_own_request(prompts):
    app = app_for(prompts, max_wait_ms=300, max_batch=64)

    async def work(client):
        good = [classify(client, [f"good text {i}"]) for i in range(30)]
        return await asyncio.gather(classify(client, ["poison pill"]), *good)

    bad, *good = asyncio.run(_with_lifespan(app, work))
    assert [r.status_code for r in good] == [200] * 30
    assert bad.status_code == 500 and bad.json() == {"detail": "prediction failed"}
    assert app.state.service.batcher.stats.batches >= 2  # the batch failed, its requests ran alone


def test_spul_predict_refuses_a_lone_surrogate_in_one_line(prompts):
    args = ["predict", "--prompt", str(prompts["a"]), "--device", "cpu", "--precision", "fp32"]
    result = CliRunner().invoke(cli, [*args, "fine", "bad \udcff byte"])
    assert result.exit_code == 2 and "text 2" in result.output and "lone surrogate" in result.output
    assert "Traceback" not in result.output


# -- limits before work --------------------------------------------------------------------------


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
