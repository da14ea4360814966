"""The fakes' named wrong answers (``bad_shape_next``) and Hugging Face zero-shot classification."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes import FakeHuggingFace, FakeOpenAI, FakeVertex
from tests.fakes.huggingface import classify
from tests.fakes.shapes import HTML_PAGE

VERTEX = "/v1/projects/p/locations/us-central1/publishers/google/models/text-embedding-005:predict"


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI("sk-k") as fake:
        yield fake


@pytest.fixture
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex("tok") as fake:
        yield fake


@pytest.fixture
def hf() -> Iterator[FakeHuggingFace]:
    with FakeHuggingFace("hf_tok") as fake:
        yield fake


def post_openai(fake: FakeOpenAI, fmt: str = "float") -> httpx.Response:
    return httpx.post(
        fake.base_url + "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": fmt},
        headers={"Authorization": "Bearer sk-k"},
        timeout=5,
    )


def post_vertex(fake: FakeVertex) -> httpx.Response:
    return httpx.post(
        fake.base_url + VERTEX,
        json={"instances": [{"content": "a"}, {"content": "b"}]},
        headers={"Authorization": "Bearer tok"},
        timeout=5,
    )


def post_hf(fake: FakeHuggingFace, body: object, model: str = "BAAI/bge-small-en-v1.5") -> httpx.Response:
    return httpx.post(
        f"{fake.base_url}/models/{model}",
        json=body,
        headers={"Authorization": "Bearer hf_tok"},
        timeout=5,
    )


def test_openai_shapes(openai: FakeOpenAI):
    openai.bad_shape_next(1, "missing")
    body = post_openai(openai).json()
    assert "data" not in body and body["object"] == "list"
    openai.bad_shape_next(1, "dims")
    data = post_openai(openai).json()["data"]
    assert [len(d["embedding"]) for d in data] == [1536, 1535]
    openai.bad_shape_next(1, "dims")
    data = post_openai(openai, "base64").json()["data"]
    assert [len(base64.b64decode(d["embedding"])) // 4 for d in data] == [1536, 1535]
    openai.bad_shape_next(1, "short")
    assert len(post_openai(openai).json()["data"]) == 1
    openai.bad_shape_next(1, "html")
    r = post_openai(openai)
    assert r.status_code == 200 and r.content == HTML_PAGE
    assert r.headers["content-type"].startswith("text/html")
    assert len(post_openai(openai).json()["data"]) == 2  # one answer per scripted shape
    with pytest.raises(ValueError):
        openai.bad_shape_next(1, "other")


def test_vertex_shapes(vertex: FakeVertex):
    vertex.bad_shape_next(1, "missing")
    assert "predictions" not in post_vertex(vertex).json()
    vertex.bad_shape_next(1, "dims")
    predictions = post_vertex(vertex).json()["predictions"]
    assert [len(p["embeddings"]["values"]) for p in predictions] == [768, 767]
    vertex.bad_shape_next(1, "short")
    assert len(post_vertex(vertex).json()["predictions"]) == 1


def test_hugging_face_shapes(hf: FakeHuggingFace):
    hf.bad_shape_next(1, "dims")
    vectors = post_hf(hf, {"inputs": ["a", "b"]}).json()
    assert [len(v) for v in vectors] == [384, 383]
    hf.bad_shape_next(1, "missing")
    assert isinstance(post_hf(hf, {"inputs": ["a", "b"]}).json(), dict)
    # mixed with the older switch, in call order
    hf.bad_body_next(1, "malformed")
    hf.bad_shape_next(1, "short")
    with pytest.raises(json.JSONDecodeError):
        json.loads(post_hf(hf, {"inputs": ["a", "b"]}).content)
    assert len(post_hf(hf, {"inputs": ["a", "b"]}).json()) == 1


def test_hugging_face_zero_shot_classification(hf: FakeHuggingFace):
    body = {
        "inputs": "I would like a refund for this broken device",
        "parameters": {"candidate_labels": ["refund", "legal", "faq"]},
    }
    answer = post_hf(hf, body, "facebook/bart-large-mnli").json()
    assert answer == classify(body["inputs"], ["refund", "legal", "faq"])
    assert sorted(a["label"] for a in answer) == ["faq", "legal", "refund"]
    scores = [a["score"] for a in answer]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0)
    multi = {**body, "parameters": {**body["parameters"], "multi_label": True}}
    assert sum(a["score"] for a in post_hf(hf, multi, "facebook/bart-large-mnli").json()) != pytest.approx(1.0)
    missing = post_hf(hf, {"inputs": "x"}, "facebook/bart-large-mnli")
    assert missing.status_code == 400 and "candidate_labels" in missing.json()["error"]
    wrong_task = httpx.post(
        f"{hf.base_url}/hf-inference/models/facebook/bart-large-mnli/pipeline/feature-extraction",
        json={"inputs": "x"},
        headers={"Authorization": "Bearer hf_tok"},
        timeout=5,
    )
    assert wrong_task.status_code == 400
