"""Property-based attacks on /v1/classify (the real tiny model): whatever the body, no 500, no traceback."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_helpers import HEALTH, app_for
from test_serve import AUTH, prompts, unlearned

__all__ = ["prompts", "unlearned"]

ANY_CHAR = st.characters(blacklist_categories=())  # surrogates and control characters included
TEXT = st.text(ANY_CHAR, max_size=40)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)
BODIES = st.one_of(
    st.builds(lambda texts: {"texts": texts}, st.lists(TEXT, max_size=70)),
    st.builds(
        lambda texts, extra: {"texts": texts} | extra, st.lists(TEXT, max_size=3), st.dictionaries(TEXT, JSON)
    ),
    st.builds(lambda texts: {"texts": texts}, JSON),
    JSON,
)


@pytest.fixture(scope="module")
def client(prompts, unlearned):
    with TestClient(app_for(prompts, unlearned["a"], max_texts=64, max_text_chars=30)) as client:
        yield client


def check(response) -> None:
    assert response.status_code in (200, 413, 422), response.text
    assert "Traceback" not in response.text and len(response.content) < 20_000
    body = response.json()
    if response.status_code == 200:
        assert all(set(p) == {"label"} for p in body["predictions"])
    else:
        assert isinstance(body["detail"], str) and "\n" not in body["detail"] and len(body["detail"]) <= 200


@settings(max_examples=120, deadline=None, suppress_health_check=HEALTH)
@given(BODIES)
def test_any_json_body(client, body):
    check(client.post("/v1/classify", content=json.dumps(body).encode(), headers=AUTH))


@settings(max_examples=60, deadline=None, suppress_health_check=HEALTH)
@given(st.binary(max_size=200))
def test_any_bytes(client, raw):
    check(client.post("/v1/classify", content=raw, headers=AUTH | {"content-type": "application/json"}))
