"""Prediction through the proxy for Hugging Face and custom model endpoints.

Hugging Face (model_provider 'hugging_face'): the AlloyDB guide's generic example registers
facebook/bart-large-mnli with its inference URL and a secret; `predict_row` sends the request
body to that URL with `Authorization: Bearer <secret>` and returns the JSON answer. The proxy
also embeds natively with Hugging Face feature-extraction models (`{"inputs": [...]}`, batches
of 32). --huggingface-base-url moves the public inference origins to the fake.

Custom endpoints (model_provider 'custom'): the body goes to the registered URL as is, with
the secret as Bearer when one is registered and no Authorization header otherwise. The fake
OpenAI's chat completions route stands in for a self-hosted OpenAI-compatible server (vLLM,
llama.cpp and the like serve this route).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.fakes.huggingface import FakeHuggingFace, classify
from tests.fakes.openai import FakeOpenAI
from tests.support import ProxyProcess, free_port

HF_TOKEN = "hf_proxyTestToken0123456789"
CUSTOM_KEY = "sk-custom-endpoint-key-42"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# The seed document's example, formatted as a user would type it: white space and all
SEED_BODY = """{
    "inputs": "Hi, I recently bought a device from your company but it is not working as advertised and I would like to get reimbursed!",
    "parameters": {"candidate_labels": ["refund", "legal", "faq"]}
}"""


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeHuggingFace, FakeOpenAI]]:
    with FakeHuggingFace(HF_TOKEN) as hf, FakeOpenAI(CUSTOM_KEY) as server:
        yield hf, server


@pytest.fixture(scope="module")
def hf_proxy(database, fakes) -> Iterator[ProxyProcess]:
    hf, _ = fakes
    p = ProxyProcess(
        [
            "--upstream", database.upstream,
            "--huggingface-base-url", hf.base_url,
            "--model-timeout", "5",
        ],
        env={
            "PGMP_TEST_HF_TOKEN": HF_TOKEN,
            "PGMP_TEST_HF_WRONG_TOKEN": "hf_thisTokenIsNotTheRightOne",
            "PGMP_TEST_CUSTOM_KEY": CUSTOM_KEY,
        },
        superuser_password=database.password,
    ).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def dbname(database, fakes) -> Iterator[str]:
    _, server = fakes
    with database.scratch("hf_custom") as name:
        with psycopg.connect(database.direct_dsn(database=name), autocommit=True) as c:
            c.execute("CREATE EXTENSION google_ml_integration")
            c.execute("CALL google_ml.create_sm_secret('hf-key', 'env:PGMP_TEST_HF_TOKEN')")
            c.execute("CALL google_ml.create_sm_secret('hf-wrong', 'env:PGMP_TEST_HF_WRONG_TOKEN')")
            c.execute("CALL google_ml.create_sm_secret('custom-key', 'env:PGMP_TEST_CUSTOM_KEY')")
            # The seed document's Hugging Face example, with both of Hugging Face's URL forms
            for model_id, url in (
                ("custom-classification-model", "https://api-inference.huggingface.co/models/facebook/bart-large-mnli"),
                ("bart-router", "https://router.huggingface.co/hf-inference/models/facebook/bart-large-mnli"),
            ):
                c.execute(
                    "CALL google_ml.create_model(model_id => %s, model_provider => 'hugging_face', "
                    "model_request_url => %s, model_qualified_name => 'facebook/bart-large-mnli', "
                    "model_auth_type => 'secret_manager', model_auth_id => 'hf-key')",
                    (model_id, url),
                )
            c.execute(
                "CALL google_ml.create_model(model_id => 'minilm', model_provider => 'hugging_face', "
                "model_request_url => %s, model_qualified_name => %s, model_type => 'text_embedding', "
                "model_auth_type => 'secret_manager', model_auth_id => 'hf-key')",
                (f"https://api-inference.huggingface.co/models/{MINILM}", MINILM),
            )
            c.execute(
                "CALL google_ml.create_model(model_id => 'minilm-wrong-key', model_provider => 'hugging_face', "
                "model_request_url => %s, model_type => 'text_embedding', "
                "model_auth_type => 'secret_manager', model_auth_id => 'hf-wrong')",
                (f"https://api-inference.huggingface.co/models/{MINILM}",),
            )
            c.execute(
                "CALL google_ml.create_model(model_id => 'vllm-chat', model_provider => 'custom', "
                "model_request_url => %s, model_qualified_name => 'llama-3-8b-instruct', "
                "model_auth_type => 'secret_manager', model_auth_id => 'custom-key')",
                (f"{server.base_url}/v1/chat/completions",),
            )
            c.execute(
                "CALL google_ml.create_model(model_id => 'vllm-open', model_provider => 'custom', "
                "model_request_url => %s)",
                (f"{server.base_url}/v1/chat/completions",),
            )
            c.execute(
                "CALL google_ml.create_model(model_id => 'nobody-home', model_provider => 'custom', "
                "model_request_url => %s)",
                (f"http://127.0.0.1:{free_port()}/v1/chat/completions",),
            )
        yield name


@pytest.fixture
def conn(hf_proxy, dbname, fakes) -> Iterator[psycopg.Connection]:
    for fake in fakes:
        fake.reset()
        fake.latency = 0
    with psycopg.connect(hf_proxy.dsn(database=dbname), autocommit=True) as c:
        yield c


def close_to(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------- Hugging Face, generic


@pytest.mark.parametrize(
    ("model_id", "path"),
    [
        ("custom-classification-model", "/models/facebook/bart-large-mnli"),
        ("bart-router", "/hf-inference/models/facebook/bart-large-mnli"),
    ],
)
def test_hugging_face_generic_model_of_the_seed_document(conn, fakes, model_id, path):
    hf, _ = fakes
    answer = conn.execute(
        "SELECT google_ml.predict_row(model_id => %s, request_body => %s::json)",
        (model_id, SEED_BODY),
    ).fetchone()[0]
    body = json.loads(SEED_BODY)
    assert answer == classify(body["inputs"], ["refund", "legal", "faq"])  # the raw answer
    assert [a["label"] for a in answer][0] in ("refund", "legal", "faq")
    request = hf.last_request
    assert request is not None and hf.request_count == 1
    assert request.path == path
    assert request.headers["authorization"] == f"Bearer {HF_TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json == body  # the request body, unchanged in content


def test_predict_row_body_is_sent_byte_for_byte(conn, fakes):
    hf, _ = fakes
    conn.execute(
        "SELECT google_ml.predict_row('custom-classification-model', %s::json)", (SEED_BODY,)
    )
    assert hf.last_request is not None
    assert hf.last_request.body == SEED_BODY.encode()


def test_predict_row_numbers_are_not_rewritten(conn, fakes):
    _, server = fakes
    body = '{"model":"llama-3-8b-instruct","messages":[{"role":"user","content":"Hi"}],"logit_bias":{"1":1e400}}'
    conn.execute("SELECT google_ml.predict_row('vllm-chat', %s::json)", (body,))
    assert server.last_request is not None
    assert server.last_request.body == body.encode()


def test_predict_row_answer_keeps_its_numbers(conn, fakes):
    _, server = fakes
    server.fail_next(1, 200, body=b'{"id": 12345678901234567890123, "score": 0.1}')
    text = conn.execute("SELECT google_ml.predict_row('vllm-chat', '{}')::text").fetchone()[0]
    assert "12345678901234567890123" in text


def test_hugging_face_answer_is_usable_in_sql_and_per_row(conn, fakes):
    hf, _ = fakes
    table = f"tickets_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
    texts = ["Where is my refund?", "I will sue you", "How do I reset the device?"]
    conn.execute(
        f"INSERT INTO {table} SELECT i, t FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i)",
        (texts,),
    )
    rows = conn.execute(
        f"SELECT id, google_ml.predict_row('custom-classification-model', json_build_object("
        f"'inputs', body, 'parameters', json_build_object('candidate_labels', "
        f"json_build_array('refund', 'legal', 'faq')))) -> 0 ->> 'label' FROM {table} ORDER BY id"
    ).fetchall()
    expected = [classify(t, ["refund", "legal", "faq"])[0]["label"] for t in texts]
    assert [r[1] for r in rows] == expected
    assert sorted(r.json["inputs"] for r in hf.requests) == sorted(texts)  # one call per row


def test_predict_row_calls_of_many_rows_run_concurrently(conn, fakes):
    _, server = fakes
    table = f"prompts_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, prompt text)")
    conn.execute(f"INSERT INTO {table} SELECT i, 'prompt ' || i FROM generate_series(1, 4) i")
    server.latency = 1.0
    answers: list[object] = []
    statement = threading.Thread(
        target=lambda: answers.extend(
            conn.execute(
                "SELECT google_ml.predict_row('vllm-chat', json_build_object('model', 'm', "
                f"'messages', json_build_array(json_build_object('role', 'user', 'content', prompt)))) "
                f"FROM {table}"
            ).fetchall()
        )
    )
    statement.start()
    try:
        # Concurrent calls all reach the endpoint at once; serial ones one a second.
        assert server.wait_for_requests(4, timeout=0.9)
    finally:
        statement.join(30)
        server.latency = 0
    assert len(answers) == 4


def test_hugging_face_wrong_token_is_the_providers_401(conn, fakes):
    hf, _ = fakes
    with pytest.raises(psycopg.Error) as failure:
        conn.execute("SELECT google_ml.embedding('minilm-wrong-key', 'x')")
    message = str(failure.value)
    assert failure.value.diag.sqlstate == "38000"
    assert "Hugging Face returned HTTP 401" in message
    assert "the token seems invalid" in message
    assert "hf_thisTokenIsNotTheRightOne" not in message
    assert hf.request_count == 1  # a 401 is not retried
    assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------------- Hugging Face, embeddings


def test_hugging_face_embedding_without_transform_functions(conn, fakes):
    hf, _ = fakes
    value = conn.execute("SELECT google_ml.embedding('minilm', 'AlloyDB is ...')").fetchone()[0]
    assert close_to(value, hf.expected_embedding("AlloyDB is ...", MINILM))
    request = hf.last_request
    assert request is not None
    assert request.path == f"/models/{MINILM}"
    assert request.json == {"inputs": ["AlloyDB is ..."]}
    assert request.headers["authorization"] == f"Bearer {HF_TOKEN}"


def test_hugging_face_embeddings_are_batched_by_32(conn, fakes, pgvector):
    hf, _ = fakes
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    table = f"hfdocs_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text, emb vector(384))")
    conn.execute(f"INSERT INTO {table} SELECT i, 'hf doc ' || i FROM generate_series(1, 70) i")
    cur = conn.execute(f"UPDATE {table} SET emb = google_ml.embedding('minilm', body)::vector")
    assert cur.rowcount == 70
    got = conn.execute(f"SELECT emb::text FROM {table} WHERE id = 42").fetchone()[0]
    assert close_to([float(x) for x in got.strip("[]").split(",")], hf.expected_embedding("hf doc 42", MINILM))
    sizes = [len(r.json["inputs"]) for r in hf.requests]
    assert sum(sizes) == 70 and max(sizes) <= 32
    assert len(sizes) == 3  # 70 texts, 32 a request


def test_hugging_face_model_loading_is_waited_for(conn, fakes):
    hf, _ = fakes
    # A cold model answers 503 with estimated_time (seconds); the proxy waits and asks again.
    hf.fail_next(
        1, 503, body={"error": f"Model {MINILM} is currently loading", "estimated_time": 0.2}
    )
    value = conn.execute("SELECT google_ml.embedding('minilm', 'cold start')").fetchone()[0]
    assert close_to(value, hf.expected_embedding("cold start", MINILM))
    assert hf.request_count == 2


def test_hugging_face_token_embeddings_are_refused(database, hf_proxy, dbname):
    # A model without sentence pooling answers one vector per token: not an embedding.
    with FakeHuggingFace(None) as raw:
        raw_model = "bert-base-uncased"
        with psycopg.connect(database.direct_dsn(database=dbname), autocommit=True) as c:
            c.execute(
                "CALL google_ml.create_model(model_id => 'bert-tokens', model_provider => 'hugging_face', "
                "model_request_url => %s, model_type => 'text_embedding')",
                (f"{raw.base_url}/models/{raw_model}",),
            )
        raw.fail_next(1, 200, body=[[[0.1, 0.2], [0.3, 0.4]]])  # [inputs][tokens][values]
        try:
            with psycopg.connect(hf_proxy.dsn(database=dbname), autocommit=True) as conn:
                with pytest.raises(psycopg.Error) as failure:
                    conn.execute("SELECT google_ml.embedding('bert-tokens', 'x')")
        finally:
            with psycopg.connect(database.direct_dsn(database=dbname), autocommit=True) as c:
                c.execute("CALL google_ml.drop_model('bert-tokens')")
    assert failure.value.diag.sqlstate == "38000"
    assert "token embeddings, not one vector per input" in str(failure.value)


# ---------------------------------------------------------------------- custom endpoints


def test_custom_endpoint_gets_the_body_and_the_secret_as_bearer(conn, fakes):
    _, server = fakes
    body = {"model": "llama-3-8b-instruct", "messages": [{"role": "user", "content": "Hi"}]}
    answer = conn.execute(
        "SELECT google_ml.predict_row('vllm-chat', %s::json)", (json.dumps(body),)
    ).fetchone()[0]
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "Echo: Hi"
    request = server.last_request
    assert request is not None and server.request_count == 1
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {CUSTOM_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.json == body
    # The legacy name and named arguments reach the same endpoint.
    text = conn.execute(
        "SELECT ml_predict_row(model_id => 'vllm-chat', request_body => %s::json) "
        "-> 'choices' -> 0 -> 'message' ->> 'content'",
        (json.dumps({**body, "messages": [{"role": "user", "content": "again"}]}),),
    ).fetchone()[0]
    assert text == "Echo: again"


def test_custom_endpoint_without_auth_sends_no_authorization(conn, fakes):
    _, server = fakes
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    with pytest.raises(psycopg.Error) as failure:
        conn.execute("SELECT google_ml.predict_row('vllm-open', %s::json)", (body,))
    request = server.last_request
    assert request is not None and "authorization" not in request.headers
    # The endpoint's own 401 comes back as the error, in its own words.
    assert failure.value.diag.sqlstate == "38000"
    assert "HTTP 401" in str(failure.value)
    assert "You didn't provide an API key" in str(failure.value)


def test_custom_endpoint_error_in_a_transaction(hf_proxy, dbname, fakes):
    _, server = fakes
    server.reset()
    server.fail_next(1, 400, body={"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}})
    with psycopg.connect(hf_proxy.dsn(database=dbname)) as tx:
        tx.execute("CREATE TEMP TABLE t (x int)")
        with pytest.raises(psycopg.Error) as failure:
            tx.execute("SELECT google_ml.predict_row('vllm-chat', '{\"max_tokens\": 1000000}')")
        assert "the model endpoint returned HTTP 400: max_tokens is too large" in str(failure.value)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            tx.execute("SELECT 1")
        tx.rollback()
        assert tx.execute("SELECT 2").fetchone() == (2,)
    assert server.request_count == 1  # a 400 is not retried


def test_custom_endpoint_that_is_not_listening(conn):
    with pytest.raises(psycopg.Error) as failure:
        conn.execute("SELECT google_ml.predict_row('nobody-home', '{}')")
    message = str(failure.value)
    assert failure.value.diag.sqlstate == "38000"
    assert 'model "nobody-home"' in message
    assert "cannot reach the model endpoint at 127.0.0.1" in message
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_custom_endpoint_answer_that_is_not_json(conn, fakes):
    _, server = fakes
    server.fail_next(1, 200, body=b"OK, I received your request")
    with pytest.raises(psycopg.Error) as failure:
        conn.execute("SELECT google_ml.predict_row('vllm-chat', '{}')")
    assert failure.value.diag.sqlstate == "38000"
    assert (
        'model "vllm-chat": unexpected response from the model endpoint: '
        "not JSON: 'OK, I received your request'"
    ) in str(failure.value)
    assert server.request_count == 1  # not retried
    assert conn.execute("SELECT 1").fetchone() == (1,)
