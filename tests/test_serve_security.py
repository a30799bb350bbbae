"""Attacks on the service: roles, what may be served, what responses say, isolation."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_helpers import HEALTH, app_for, derived, finetune_prompt, reloads
from test_serve import ADMIN, ADMIN_TOKEN, AUTH, TEXTS, TOKEN, _with_lifespan, classify, prompts, unlearned
from typer.testing import CliRunner

from spul.cli import app as cli
from spul.serve import ServedPrompt

__all__ = ["prompts", "unlearned"]  # module-scoped fixtures shared with test_serve


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
