"""The HTTP service on the tiny model: auth, limits, the prompt on every request, batching, reload, drain."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from spul.engine import score
from spul.errors import SpulError
from spul.models import load_model
from spul.pipeline import load_unlearned, train_artifact
from spul.serve import ServeConfig, ServedPrompt, create_app, prompt_loader
from spul.serve.app import public
from spul.serve.auth import TOKEN_ENV, resolve_token
from spul.training import TrainConfig

TOKEN = "test-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TEXTS = [
    "a gorgeous, witty, seductive movie.",
    "the film is strictly routine.",
    "unflinchingly bleak and desperate",
    "it's a charming and often affecting journey.",
    "music",
    "the acting, costumes, music, cinematography and sound are all astounding",
]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> dict[str, Path]:
    """The tiny model saved, and two different prompts trained over it (b covers two requests)."""
    from conftest import make_tiny_lm, toy_data

    root = tmp_path_factory.mktemp("serve")
    lm = make_tiny_lm()
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    for name, lr, extra in (("a", 1e-2, None), ("b", 2e-1, {"requests": ["req-0001", "req-0002"]})):
        train_artifact(
            "spul",
            load_model(str(root / "model"), device="cpu", precision="fp32"),
            toy_data(),
            root / name,
            method_options={"num_virtual_tokens": 4},
            config=TrainConfig(epochs=1, batch_size=8, lr=lr),
            show_progress=False,
            extra_manifest=extra,
        )
    return {"model": root / "model", "a": root / "a", "b": root / "b"}


@pytest.fixture(scope="module")
def unlearned(prompts):
    """Both prompts loaded as the library loads them (the reference answers)."""
    return {k: load_unlearned(prompts[k], device="cpu", precision="fp32") for k in ("a", "b")}


def same(got, want, tol=1e-5):
    """Same labels and probabilities (as the service shows them: none for `other`) up to float noise."""
    want = public(want, True)
    return len(got) == len(want) and all(
        g["label"] == w["label"]
        and g.get("probabilities") == pytest.approx(w.get("probabilities"), abs=tol)
        and ("probabilities" in g) == ("probabilities" in w)
        for g, w in zip(got, want, strict=True)
    )


def make_app(prompts, unlearned, **settings):
    settings = {"token": TOKEN, "admin_token": ADMIN_TOKEN, "return_probabilities": True} | settings
    config = ServeConfig(**settings)
    loader = prompt_loader(prompts["a"], device="cpu", precision="fp32")
    return create_app(ServedPrompt.wrap(unlearned["a"]), config, loader=loader)


def classify(client, texts, headers=AUTH):
    return client.post("/v1/classify", json={"texts": texts}, headers=headers)


def test_no_or_wrong_token_is_401(prompts, unlearned):
    with TestClient(make_app(prompts, unlearned)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            response = classify(client, TEXTS[:1], headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            assert "token" in response.json()["detail"]
        assert client.get("/metrics").status_code == 401
        assert client.post("/v1/admin/reload", json={}).status_code == 401
        assert client.post("/v1/admin/reload", json={}, headers=AUTH).status_code == 403
        assert client.get("/v1/prompt").status_code == 401
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json() == {"ready": True}
        assert classify(client, TEXTS[:1]).status_code == 200


def test_limits_answer_413_and_422_with_a_message(prompts, unlearned):
    app = make_app(prompts, unlearned, max_body_bytes=400, max_texts=3, max_text_chars=40)
    with TestClient(app) as client:
        big = classify(client, ["x" * 30] * 20)
        assert big.status_code == 413 and "400 bytes" in big.json()["detail"]

        def chunks():  # no content-length: the size is counted as the body streams in
            yield b'{"texts": ["'
            for _ in range(50):
                yield b"y" * 20
            yield b'"]}'

        streamed = client.post(
            "/v1/classify", content=chunks(), headers=AUTH | {"content-type": "application/json"}
        )
        assert streamed.status_code == 413

        many = classify(client, ["good"] * 4)
        assert many.status_code == 422 and many.json()["detail"] == "4 texts in one request; the limit is 3"
        long = classify(client, ["good", "z" * 41])
        assert long.status_code == 422
        assert long.json()["detail"] == "texts[1] has 41 characters; the limit is 40"
        assert classify(client, []).status_code == 422
        assert "texts[0] is empty" in classify(client, ["  "]).json()["detail"]
        # nothing in the request can switch the prompt off
        off = client.post("/v1/classify", json={"texts": ["good"], "prompt": False}, headers=AUTH)
        assert off.status_code == 422
        assert classify(client, ["z" * 40]).status_code == 200


def test_every_request_gets_the_prompt(prompts, unlearned, tmp_path):
    with TestClient(make_app(prompts, unlearned)) as client:
        response = classify(client, TEXTS)
    assert response.status_code == 200
    body = response.json()
    assert body["predictions"] == public(unlearned["a"].predict(TEXTS, batch_size=32), True)
    assert body["prompt"]["id"] == "a" and len(body["prompt"]["fingerprint"]) == 32
    assert "path" not in body["prompt"] and str(prompts["a"].parent) not in response.text
    # the same as `spul predict` prints
    from typer.testing import CliRunner

    from spul.cli import app as cli

    result = CliRunner().invoke(
        cli, ["predict", "--prompt", str(prompts["a"]), "--device", "cpu", "--precision", "fp32", *TEXTS]
    )
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert public(printed, True) == body["predictions"]
    # and not what the model says without the prompt
    plain = unlearned["a"]
    bare = score(plain.lm, plain.encoder, plain.verbalizer, TEXTS, [0] * len(TEXTS), show_progress=False)
    raw = plain.predict(TEXTS, batch_size=32)  # the service hides probabilities by default
    with_prompt = [p["probabilities"][plain.verbalizer.words[0]] for p in raw]
    without = [float(x) for x in torch.softmax(torch.tensor(bare.logprobs), dim=1)[:, 0]]  # normalised alike
    assert with_prompt != pytest.approx(without, abs=1e-3)


async def _with_lifespan(app, work):
    """Run `work(client)` against the app in this event loop, with startup and shutdown."""
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://spul") as client:
            return await work(client)


def test_concurrent_requests_are_batched_and_answer_as_one_by_one(prompts, unlearned):
    app = make_app(prompts, unlearned, max_wait_ms=300, max_batch=16)
    requests = [TEXTS[i % 6 : i % 6 + 1 + i % 3] for i in range(10)]

    async def work(client):
        responses = await asyncio.gather(*(classify(client, texts) for texts in requests))
        return [r.json() for r in responses if r.status_code == 200]

    answers = asyncio.run(_with_lifespan(app, work))
    stats = app.state.service.batcher.stats
    assert len(answers) == len(requests)
    assert stats.texts == sum(map(len, requests)) and stats.batches < len(requests)
    assert max(stats.sizes) <= 16
    for texts, answer in zip(requests, answers, strict=True):
        assert same(answer["predictions"], [unlearned["a"].predict([t])[0] for t in texts])


def test_reload_swaps_atomically_and_keeps_every_request(prompts, unlearned):
    app = make_app(prompts, unlearned, max_wait_ms=20, max_batch=8)
    want = {
        ServedPrompt.wrap(u).info["fingerprint"]: {t: p for t, p in zip(TEXTS, u.predict(TEXTS), strict=True)}
        for u in unlearned.values()
    }
    fa, fb = (ServedPrompt.wrap(unlearned[k]).info["fingerprint"] for k in ("a", "b"))
    # the two prompts compute far-apart label probabilities (before the answer policy withholds them
    # behind a generic answer), so they are two different prompts
    raw = {}
    for key, u in unlearned.items():
        u.withhold = False
        raw[key] = u.predict(TEXTS)
        u.withhold = True
    gaps = [
        abs(a["probabilities"]["positive"] - b["probabilities"]["positive"])
        for a, b in zip(*raw.values(), strict=True)
    ]
    assert min(gaps) > 1e-3

    async def work(client):
        async def one(i):
            texts = [TEXTS[i % 6], TEXTS[(i + 1) % 6]]
            response = await classify(client, texts)
            return texts, response

        before = [asyncio.create_task(one(i)) for i in range(12)]
        await asyncio.sleep(0.01)
        reload = asyncio.create_task(
            client.post("/v1/admin/reload", json={"prompt": str(prompts["b"])}, headers=ADMIN)
        )
        during = [asyncio.create_task(one(i)) for i in range(12, 24)]
        reloaded = await reload
        after = [await one(i) for i in range(24, 27)]
        failed = await client.post(
            "/v1/admin/reload", json={"prompt": str(prompts["b"]) + "-missing"}, headers=ADMIN
        )
        info = (await client.get("/v1/prompt", headers=AUTH)).json()
        metrics = (await client.get("/metrics", headers=AUTH)).text
        return await asyncio.gather(*before, *during), after, reloaded, failed, info, metrics

    mixed, after, reloaded, failed, info, metrics = asyncio.run(_with_lifespan(app, work))
    assert reloaded.status_code == 200, reloaded.text
    assert (
        reloaded.json()["previous"]["fingerprint"] == fa and reloaded.json()["current"]["fingerprint"] == fb
    )
    for texts, response in mixed + after:
        assert response.status_code == 200
        body = response.json()
        expected = want[body["prompt"]["fingerprint"]]  # a batch is answered wholly by the prompt it names
        assert same(body["predictions"], [expected[t] for t in texts])
    assert {r.json()["prompt"]["fingerprint"] for _, r in after} == {fb}
    assert failed.status_code == 403 and "not a prompt folder under the prompt roots" in failed.text
    assert info["fingerprint"] == fb and info["requests"] == ["req-0001", "req-0002"]
    assert 'spul_prompt_reloads_total{result="ok"} 1.0' in metrics
    assert 'spul_prompt_reloads_total{result="failed"} 1.0' in metrics


def test_shutdown_finishes_in_flight_requests(prompts, unlearned):
    app = make_app(prompts, unlearned, max_wait_ms=200)
    service = app.state.service

    async def work(client):
        tasks = [asyncio.create_task(classify(client, [t])) for t in TEXTS]
        while service.metrics.in_flight._value.get() < len(TEXTS):  # all queued (the batch waits 200 ms)
            await asyncio.sleep(0.005)
        assert not any(t.done() for t in tasks)
        await service.stop()  # what the lifespan's shutdown does
        ready = await client.get("/readyz")
        late = await classify(client, TEXTS[:1])
        return await asyncio.gather(*tasks), ready, late

    done, ready, late = asyncio.run(_with_lifespan(app, work))
    assert [r.status_code for r in done] == [200] * len(TEXTS)
    assert ready.status_code == 503 and late.status_code == 503


def test_openapi_and_metrics(prompts, unlearned):
    with TestClient(make_app(prompts, unlearned, docs=True)) as client:
        assert client.get("/openapi.json").status_code == 401
        schema = client.get("/openapi.json", headers=AUTH).json()
        classify(client, TEXTS[:3])
        classify(client, [])
        text = client.get("/metrics", headers=AUTH).text
    assert {"/v1/classify", "/v1/admin/reload", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert schema["components"]["schemas"]["ClassifyRequest"]["additionalProperties"] is False
    families = {f.name: f for f in text_string_to_metric_families(text)}
    codes = {
        (s.labels["route"], s.labels["code"]): s.value
        for s in families["spul_http_requests"].samples
        if s.name.endswith("_total")
    }
    assert codes[("/v1/classify", "200")] == 1 and codes[("/v1/classify", "422")] == 1
    assert next(s.value for s in families["spul_classified_texts"].samples if s.name.endswith("_total")) == 3
    assert "spul_batch_texts" in families and "spul_prompt_info" in families
    recorded = json.loads((prompts["a"] / "spul.json").read_text())["metrics"]
    check = {(s.labels["split"], s.labels["metric"]): s.value for s in families["spul_prompt_check"].samples}
    assert {split for split, _ in check} == set(recorded) and len(check) == 3 * len(recorded)
    for (split, metric), value in check.items():
        assert value == pytest.approx(recorded[split][metric])


def test_token_comes_from_env_or_file_and_is_required(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(SpulError, match="no API token"):
        resolve_token(None, False, "127.0.0.1")
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(SpulError, match="too short"):
        resolve_token(None, False, "127.0.0.1")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert resolve_token(None, False, "0.0.0.0") == TOKEN
    file = tmp_path / "token"
    file.write_text("file-token-0123456789abcdef\n")
    assert resolve_token(file, False, "127.0.0.1") == "file-token-0123456789abcdef"
    with pytest.raises(SpulError, match="not found"):
        resolve_token(tmp_path / "missing", False, "127.0.0.1")
    assert resolve_token(None, True, "127.0.0.1") is None
    with pytest.raises(SpulError, match="local use only"):
        resolve_token(None, True, "0.0.0.0")


def test_spul_serve_refuses_to_start_without_a_token(prompts, monkeypatch):
    from typer.testing import CliRunner

    from spul.cli import app as cli

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    result = CliRunner().invoke(cli, ["serve", "--prompt", str(prompts["a"])])
    assert result.exit_code == 2 and "no API token" in result.output
    result = CliRunner().invoke(cli, ["serve", "--insecure-no-auth", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "local use only" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_spul_serve_process_reloads_on_sighup_and_drains_on_sigterm(prompts, unlearned, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(prompts["a"], live)
    port = _free_port()
    env = os.environ | {TOKEN_ENV: TOKEN}
    command = [sys.executable, "-m", "spul", "serve", "--prompt", str(live), "--port", str(port)]
    command += ["--device", "cpu", "--precision", "fp32", "--max-wait-ms", "1500", "--log-level", "warning"]
    command += ["--return-probabilities", "--body-timeout", "1"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        first = httpx.post(f"{base}/v1/classify", json={"texts": TEXTS}, headers=AUTH, timeout=30).json()
        assert same(first["predictions"], unlearned["a"].predict(TEXTS))
        # a big unauthenticated upload is refused from its headers and the connection closed; a stalled
        # authenticated one gets 408 after --body-timeout
        for headers, code in ((b"", b"401"), (f"Authorization: Bearer {TOKEN}\r\n".encode(), b"408")):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 990000\r\n" + headers
                raw.sendall(head + b"\r\n" + b"x" * 1000)
                answer = b""
                while chunk := raw.recv(65536):  # EOF: the server closed the connection
                    answer += chunk
                assert answer.split(b" ")[1] == code, answer

        shutil.rmtree(live)
        shutil.copytree(prompts["b"], live)  # a new prompt in the same folder, then SIGHUP
        server.send_signal(signal.SIGHUP)
        want = ServedPrompt.wrap(unlearned["b"]).info["fingerprint"]
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/v1/prompt", headers=AUTH, timeout=5).json()["fingerprint"] != want:
            assert time.monotonic() < deadline, "SIGHUP did not reload the prompt"
            time.sleep(0.1)

        results = {}

        def in_flight():  # waits 1.5 s in the batcher: SIGTERM arrives meanwhile
            results["r"] = httpx.post(f"{base}/v1/classify", json={"texts": TEXTS}, headers=AUTH, timeout=30)

        thread = threading.Thread(target=in_flight)
        thread.start()
        deadline = time.monotonic() + 10
        while "spul_in_flight_requests 1.0" not in httpx.get(f"{base}/metrics", headers=AUTH, timeout=5).text:
            assert time.monotonic() < deadline, "the request did not arrive"
            time.sleep(0.02)
        server.send_signal(signal.SIGTERM)
        thread.join(30)
        assert results["r"].status_code == 200
        assert same(results["r"].json()["predictions"], unlearned["b"].predict(TEXTS))
        # uvicorn re-raises the signal after its graceful shutdown: the conventional exit status of SIGTERM
        assert server.wait(30) in (0, -signal.SIGTERM)
        output = server.stdout.read()
        assert "Traceback" not in output and "ERROR" not in output, output
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
