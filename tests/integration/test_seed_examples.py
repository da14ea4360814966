"""Every SQL example of the AlloyDB seed documents, run through the proxy against the fakes.

The seeds (the product documents, kept in the project's steering repo as ``seeds/``):

- **000** (French) AlloyDB, "Enregistrer et appeler des modèles d'IA distants à l'aide de la
  gestion des points de terminaison de modèle";
- **001** (French) the same guide for AlloyDB Omni, which adds ``ALTER SYSTEM SET
  google_ml_integration.enable_model_support=on``; its statements are otherwise 000's (the
  same text, whitespace aside), so one test covers both (id ``seed000+001``);
- **003** (Portuguese) the reference: every procedure and function, the transform and header
  function contracts, the request URL function, the supported models.

Each example's SQL is kept below as the documents print it (module constants, compared with the
seeds by whitespace-normalised text when this file was written). What had to change to point at
the local fakes (secret paths, request URLs of custom endpoints, API keys inside header
functions) or to turn a placeholder into a value the statement accepts (``'PROVIDER_ID'``,
``'REQUEST_BODY'``, ...) is substituted at the use site with ``substitute``, with a comment
saying why. Placeholders that are valid as they stand (``'MODEL_ID'``, ``'SECRET_ID'``,
``'MODEL_QUALIFIED_NAME'``, ``HEADER_GEN_FUNCTION``) are kept: every test gets a database of
its own, so they cannot collide.

Statements run through ``psql`` in a subprocess (simple protocol, as the documents mean them to
be typed), one invocation a doc step, with ``ON_ERROR_STOP`` and verbose errors, so a failing
example reports the server's exact ``ERROR:  SQLSTATE: message``. Results are checked against
what the documents say they return: a ``real[]`` of the model's dimension equal to the fake's
vector, the provider's raw JSON, the model registered with the documented columns, ...

Doc errata. Three examples cannot run as printed on any PostgreSQL (nor on AlloyDB):
the ``text-multilingual-embedding-002`` registration lacks a comma (syntax error), the 003
``google_ml.embedding`` example names its argument ``contents`` (the function's parameter is
``content``), and 000/001 apply ``json_array_elements`` to ``gemini-1.5-pro:generateContent``,
whose answer is one JSON object (AlloyDB's "Invoke predictions" page uses
``:streamGenerateContent``, whose answer is an array). For each, one test runs the printed text
and expects the error PostgreSQL gives, and another runs the evident intent and checks the
documented result.

Not SQL, hence not here: the ``gcloud secrets add-iam-policy-binding`` commands and the
``curl`` requests of 003 (the latter are checked as what the fake Cymbal endpoint receives).
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from proxy.embedded import bundled_bin_dir
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import FakeProvider, RecordedRequest, Response
from tests.fakes.embeddings import embed
from tests.fakes.google_oauth import FakeGoogleOAuth
from tests.fakes.huggingface import FakeHuggingFace
from tests.fakes.openai import FakeOpenAI
from tests.fakes.secret_manager import FakeSecretManager
from tests.fakes.vertex import FakeVertex
from tests.support import ProxyProcess, service_account_key

TOKEN = "ya29.seed-examples-token"  # Google access token (Vertex AI and Secret Manager)
PROJECT = "pgmp-seed-project"
OPENAI_KEY = "sk-seed-openai"
ANTHROPIC_KEY = "sk-ant-seed"
HF_TOKEN = "hf_seed_token"
CYMBAL_KEY = "cymbal-seed-key"
CYMBAL_DIM = 50  # 003's example response of the Cymbal endpoint has 50 values

# 001 prints 000's statements (whitespace aside): one run covers both, under one id.
SEEDS_000_001 = [pytest.param("000+001", id="seed000+001")]

# Secrets the fake Secret Manager holds (the documents' SECRET_MANAGER_SECRET_ID, per provider).
SECRETS: dict[str, str | bytes | list[str | bytes]] = {
    "openai-api-key": OPENAI_KEY,
    "cymbal-api-key": [CYMBAL_KEY, CYMBAL_KEY + "-v2"],
    "hf-token": HF_TOKEN,
    "anthropic-api-key": ANTHROPIC_KEY,
    "openai-api-key-rotated": ["sk-seed-revoked", OPENAI_KEY],  # version 1 no longer valid
}


def sm_path(secret: str, version: int = 1) -> str:
    """A Secret Manager path the fake answers (the documents' PROJECT_ID/... placeholders)."""
    return f"projects/{PROJECT}/secrets/{secret}/versions/{version}"


# ================================================================================ the examples
# Verbatim from the seeds (indentation of the first line aside).

# 000 + 001 "Activer l'extension"
ALTER_EXTENSION_UPDATE = "ALTER EXTENSION google_ml_integration UPDATE;"
CREATE_EXTENSION = "CREATE EXTENSION IF NOT EXISTS google_ml_integration;"
GRANT_NON_SUPER_USER = (
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA google_ml TO NON_SUPER_USER;"
)
# 001 only, step 5
ALTER_SYSTEM_ENABLE = """
  ALTER SYSTEM SET google_ml_integration.enable_model_support=on;
  SELECT pg_reload_conf();
"""

# 000 + 001 "Configurer l'authentification à l'aide d'en-têtes"
HEADER_GEN_FUNCTION = """
  CREATE OR REPLACE FUNCTION HEADER_GEN_FUNCTION(
    model_id VARCHAR(100),
    input_text TEXT
  )
  RETURNS JSON
  LANGUAGE plpgsql
  AS $$
  #variable_conflict use_variable
  DECLARE
    api_key VARCHAR(255) := 'API_KEY';
    header_json JSON;
  BEGIN
    header_json := json_build_object(
      'Content-Type', 'application/json',
      'Authorization', 'Bearer ' || api_key
    );
    RETURN header_json;
  END;
  $$;
"""

# 000 + 001 "Modèles d'embeddings de texte" (pre-registered models)
PREREGISTERED_EMBEDDING = """
SELECT
      google_ml.embedding(
        model_id => 'textembedding-gecko',
        content => 'AlloyDB is a managed, cloud-hosted SQL database service');
"""
# also 000 + 001 "Modèle Gemini", step 3 (the same text)
PREREGISTERED_GEMINI = """
 SELECT
        json_array_elements(
        google_ml.predict_row(
            model_id => 'gemini-1.5-pro:generateContent',
            request_body => '{
        "contents": [
            {
                "role": "user",
                "parts": [
                    {
                        "text": "For TPCH database schema as mentioned here https://www.tpc.org/TPC_Documents_Current_Versions/pdf/TPC-H_v3.0.1.pdf , generate a SQL query to find all supplier names which are located in the India nation."
                    }
                ]
            }
        ]
        }'))-> 'candidates' -> 0 -> 'content' -> 'parts' -> 0 -> 'text';
"""

# 000 + 001 "Modèles d'embedding Vertex AI"
VERTEX_TEXT_EMBEDDING_005 = """
      CALL
        google_ml.create_model(
          model_id => 'text-embedding-005',
          model_request_url => 'publishers/google/models/text-embedding-005',
          model_provider => 'google',
          model_qualified_name => 'text-embedding-005',
          model_type => 'text_embedding',
          model_auth_type => 'alloydb_service_agent_iam');
"""
VERTEX_MULTILINGUAL_002 = """
      CALL
        google_ml.create_model(
          model_id => 'text-multilingual-embedding-002',
          model_request_url => 'publishers/google/models/text-multilingual-embedding-002',
          model_provider => 'google',
          model_qualified_name => 'text-multilingual-embedding-002',
          model_type => 'text_embedding',
          model_auth_type => 'alloydb_service_agent_iam'
          model_in_transform_fn => 'google_ml.vertexai_text_embedding_input_transform',
          model_out_transform_fn => 'google_ml.vertexai_text_embedding_output_transform');
"""

# 000 + 001 "Modèle d'embedding textuel Open AI"
OPENAI_SECRET = """
    CALL
    google_ml.create_sm_secret(
      secret_id => 'SECRET_ID',
      secret_path => 'projects/PROJECT_ID/secrets/SECRET_MANAGER_SECRET_ID/versions/VERSION_NUMBER');
"""
OPENAI_MODEL = """
    CALL
      google_ml.create_model(
        model_id => 'MODEL_ID',
        model_provider => 'open_ai',
        model_type => 'text_embedding',
        model_qualified_name => 'text-embedding-ada-002',
        model_auth_type => 'secret_manager',
        model_auth_id => 'SECRET_ID');
"""

# 000 + 001: the secret step of the custom, Hugging Face and Anthropic sections (and 003's
# create_sm_secret): lower-case project-id
SM_SECRET = """
    CALL
      google_ml.create_sm_secret(
        secret_id => 'SECRET_ID',
        secret_path => 'projects/project-id/secrets/SECRET_MANAGER_SECRET_ID/versions/VERSION_NUMBER');
"""
SM_SECRET_PATH = "projects/project-id/secrets/SECRET_MANAGER_SECRET_ID/versions/VERSION_NUMBER"

# 000 + 001 "Modèle d'embedding de texte hébergé en interne"
CYMBAL_TRANSFORMS = """
    -- Input Transform Function corresponding to the custom model endpoint
    CREATE OR REPLACE FUNCTION cymbal_text_input_transform(model_id VARCHAR(100), input_text TEXT)
    RETURNS JSON
    LANGUAGE plpgsql
    AS $$
    DECLARE
      transformed_input JSON;
      model_qualified_name TEXT;
    BEGIN
      SELECT json_build_object('prompt', json_build_array(input_text))::JSON INTO transformed_input;
      RETURN transformed_input;
    END;
    $$;
    -- Output Transform Function corresponding to the custom model endpoint
    CREATE OR REPLACE FUNCTION cymbal_text_output_transform(model_id VARCHAR(100), response_json JSON)
    RETURNS REAL[]
    LANGUAGE plpgsql
    AS $$
    DECLARE
      transformed_output REAL[];
    BEGIN
      SELECT ARRAY(SELECT json_array_elements_text(response_json->0)) INTO transformed_output;
      RETURN transformed_output;
    END;
    $$;
"""
CUSTOM_MODEL = """
    CALL
      google_ml.create_model(
        model_id => 'MODEL_ID',
        model_request_url => 'REQUEST_URL',
        model_provider => 'custom',
        model_type => 'text_embedding',
        model_auth_type => 'secret_manager',
        model_auth_id => 'SECRET_ID',
        model_qualified_name => 'MODEL_QUALIFIED_NAME',
        model_in_transform_fn => 'cymbal_text_input_transform',
        model_out_transform_fn => 'cymbal_text_output_transform');
"""

# 000 + 001 "Modèle générique sur Hugging Face"
HUGGING_FACE_MODEL = """
    CALL
      google_ml.create_model(
        model_id => 'MODEL_ID',
        model_provider => 'hugging_face',
        model_request_url => 'REQUEST_URL',
        model_qualified_name => 'MODEL_QUALIFIED_NAME',
        model_auth_type => 'secret_manager',
        model_auth_id => 'SECRET_ID');
"""

# 000 + 001 "Modèle générique Anthropic", tab "Secret Manager"
ANTHROPIC_MODEL_SECRET = """
      CALL
        google_ml.create_model(
          model_id => 'MODEL_ID',
          model_provider => 'anthropic',
          model_request_url => 'REQUEST_URL',
          model_auth_type => 'secret_manager',
          model_auth_id => 'SECRET_ID',
          generate_headers_fn => 'google_ml.anthropic_claude_header_gen_fn');
"""
# tab "En-tête d'autorisation"
ANTHROPIC_SAMPLE_HEADER_GEN_FN = """
        CREATE OR REPLACE FUNCTION anthropic_sample_header_gen_fn(model_id VARCHAR(100), request_body JSON)
        RETURNS JSON
        LANGUAGE plpgsql
        AS $$
        #variable_conflict use_variable
        BEGIN
              RETURN json_build_object('x-api-key', 'ANTHROPIC_API_KEY', 'anthropic-version', 'ANTHROPIC_VERSION')::JSON;
        END;
        $$;
"""
ANTHROPIC_MODEL_HEADERS = """
      CALL
        google_ml.create_model(
          model_id => 'MODEL_ID',
          model_provider => 'anthropic',
          model_request_url => 'REQUEST_URL',
          generate_headers_fn => 'google_ml.anthropic_claude_header_gen_fn');
"""

# 003 "Modelos"
REF_CREATE_MODEL = """
  CALL
    google_ml.create_model(
      model_id => 'MODEL_ID',
      model_request_url => 'REQUEST_URL',
      model_provider => 'PROVIDER_ID',
      model_type => 'MODEL_TYPE',
      model_qualified_name => 'MODEL_QUALIFIED_NAME',
      model_auth_type => 'AUTH_TYPE',
      model_auth_id => 'AUTH_ID',
      generate_headers_fn => 'GENERATE_HEADER_FUNCTION',
      model_in_transform_fn => 'INPUT_TRANSFORM_FUNCTION',
      model_out_transform_fn => 'OUTPUT_TRANSFORM_FUNCTION');
"""
REF_ALTER_MODEL = """
    CALL
    google_ml.alter_model(
      model_id => 'MODEL_ID',
      model_request_url => 'REQUEST_URL',
      model_provider => 'PROVIDER_ID',
      model_type => 'MODEL_TYPE',
      model_qualified_name => 'MODEL_QUALIFIED_NAME',
      model_auth_type => 'AUTH_TYPE',
      model_auth_id => 'AUTH_ID',
      generate_headers_fn => 'GENERATE_HEADER_FUNCTION',
      model_in_transform_fn => 'INPUT_TRANSFORM_FUNCTION',
      model_out_transform_fn => 'OUTPUT_TRANSFORM_FUNCTION');
"""
REF_DROP_MODEL = "CALL google_ml.drop_model('MODEL_ID');"
REF_LIST_MODEL = "SELECT google_ml.list_model('MODEL_ID');"
REF_MODEL_INFO_VIEW = "SELECT * FROM google_ml.model_info_view;"

# 003 "Secrets"
REF_CREATE_SM_SECRET = """
    CALL
    google_ml.create_sm_secret(
      secret_id => 'SECRET_ID',
      secret_path => 'projects/project-id/secrets/SECRET_MANAGER_SECRET_ID/versions/VERSION_NUMBER');
"""
REF_ALTER_SM_SECRET = """
  CALL
    google_ml.alter_sm_secret(
      secret_id => 'SECRET_ID',
      secret_path => 'projects/project-id/secrets/SECRET_MANAGER_SECRET_ID/versions/VERSION_NUMBER');
"""
REF_DROP_SM_SECRET = "CALL google_ml.drop_sm_secret('SECRET_ID');"

# 003 "Funções de previsão"
REF_EMBEDDING = """
SELECT
  google_ml.embedding(
    model_id => 'MODEL_ID',
    contents => 'CONTENT');
"""
REF_PREDICT_ROW = """
SELECT
  google_ml.predict_row(
    model_id => 'MODEL_ID',
    request_body => 'REQUEST_BODY');
"""

# 003 "Funções de transformação": signatures (declarations without a body, not statements)
REF_INPUT_TRANSFORM_SIGNATURE = (
    "CREATE OR REPLACE FUNCTION INPUT_TRANSFORM_FUNCTION(model_id VARCHAR(100), input_text TEXT) RETURNS JSON;"
)
REF_OUTPUT_TRANSFORM_SIGNATURE = (
    "CREATE OR REPLACE FUNCTION OUTPUT_TRANSFORM_FUNCTION(model_id VARCHAR(100), response_json JSON) RETURNS real[];"
)
# "Exemplo de funções de transformação" (003's copy of the Cymbal functions)
REF_CYMBAL_INPUT_TRANSFORM = """
CREATE OR REPLACE FUNCTION cymbal_text_input_transform(model_id VARCHAR(100), input_text TEXT)
RETURNS JSON
LANGUAGE plpgsql
AS $$
DECLARE
  transformed_input JSON;
  model_qualified_name TEXT;
BEGIN
  SELECT json_build_object('prompt', json_build_array(input_text))::JSON INTO transformed_input;
  RETURN transformed_input;
END;
$$;
"""
REF_CYMBAL_OUTPUT_TRANSFORM = """
CREATE OR REPLACE FUNCTION cymbal_text_output_transform(model_id VARCHAR(100), response_json JSON)
RETURNS REAL[]
LANGUAGE plpgsql
AS $$
DECLARE
  transformed_output REAL[];
BEGIN
SELECT ARRAY(SELECT json_array_elements_text(response_json->0)) INTO transformed_output;
RETURN transformed_output;
END;
$$;
"""

# 003 "Função de geração de cabeçalho HTTP": signatures
REF_HEADERS_SIGNATURE_EMBEDDING = (
    "CREATE OR REPLACE FUNCTION GENERATE_HEADERS(model_id VARCHAR(100), input_text TEXT) RETURNS JSON;"
)
REF_HEADERS_SIGNATURE_PREDICT = (
    "CREATE OR REPLACE FUNCTION GENERATE_HEADERS(model_id TEXT, input JSON) RETURNS JSON;"
)
# "Exemplo de função de geração de cabeçalho"
REF_HEADER_GEN_FN = """
CREATE OR REPLACE FUNCTION header_gen_fn(model_id VARCHAR(100), input_text TEXT)
RETURNS JSON
LANGUAGE plpgsql
AS $$
BEGIN
  RETURN json_build_object('version', '2024-01-01')::JSON;
END;
$$;
"""
# "Função de geração de cabeçalho usando a chave de API": modelo de embedding
REF_HEADER_GEN_FUNC_EMBEDDING = """
CREATE OR REPLACE FUNCTION header_gen_func(
  model_id VARCHAR(100),
  input_text TEXT
)
RETURNS JSON
LANGUAGE plpgsql
AS $$
#variable_conflict use_variable
BEGIN
  RETURN json_build_object('Authorization', 'API_KEY')::JSON;
END;
$$;
"""
# ... modelo genérico
REF_HEADER_GEN_FUNC_GENERIC = """
CREATE OR REPLACE FUNCTION header_gen_func(
  model_id VARCHAR(100),
  response_json JSON
)
RETURNS JSON
LANGUAGE plpgsql
AS $$
#variable_conflict use_variable
DECLARE
transformed_output REAL[];
BEGIN
  -- code to add Auth token to API request
RETURN json_build_object('x-api-key', 'API_KEY', 'anthropic-version', '2023-06-01')::JSON;
END;
$$;
"""

# 003 "Geração de URL da solicitação": the signature of the extension's function
REF_GENERATE_REQUEST_URL_SIGNATURE = (
    "CREATE OR REPLACE FUNCTION GENERATE_REQUEST_URL(provider google_ml.model_provider, "
    "model_type google_ml.MODEL_TYPE, model_qualified_name VARCHAR(100), "
    "model_region VARCHAR(100) DEFAULT NULL)"
)

# Request bodies of AlloyDB's "Invoke predictions" page (not in the seeds), used to call the
# generic models the seeds register.
HF_BODY = (
    '{"inputs": "Hi, I recently bought a device from your company but it is not working as '
    'advertised and I would like to get reimbursed!", '
    '"parameters": {"candidate_labels": ["refund", "legal", "faq"]}}'
)
ANTHROPIC_BODY = (
    '{"model": "claude-3-opus-20240229", "max_tokens": 1024, '
    '"messages": [{"role": "user", "content": "Hello, world"}]}'
)


# ================================================================================ machinery
def substitute(sql: str, replacements: dict[str, str]) -> str:
    """`sql` with each key replaced by its value; every key must occur (no silent no-op)."""
    for old, new in replacements.items():
        assert old in sql, f"{old!r} is not in the example"
        sql = sql.replace(old, new)
    return sql


class FakeCymbal(FakeProvider):
    """The self-hosted endpoint of the seeds' custom-model example (003 shows its curl):
    ``POST /models/text/embeddings/v1`` with ``{"prompt": [text, ...]}`` answers one vector per
    prompt, ``[[0.35, -0.36, ...]]`` (50 values). No authentication of its own: the tests check
    the headers each example's functions or secret put on the request."""

    def route(self, request: RecordedRequest) -> Response:
        if request.method != "POST" or request.path != "/models/text/embeddings/v1":
            return Response(404, {"error": "not found"})
        prompts = request.json.get("prompt") if isinstance(request.json, dict) else None
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            return Response(400, {"error": "expected {\"prompt\": [text, ...]}"})
        return Response(200, [embed(p, CYMBAL_DIM) for p in prompts])

    @property
    def url(self) -> str:
        return f"{self.base_url}/models/text/embeddings/v1"


@dataclass
class Fakes:
    oauth: FakeGoogleOAuth
    vertex: FakeVertex
    openai: FakeOpenAI
    anthropic: FakeAnthropic
    hugging_face: FakeHuggingFace
    secret_manager: FakeSecretManager
    cymbal: FakeCymbal

    def all(self) -> list[FakeProvider]:
        return [self.vertex, self.openai, self.anthropic, self.hugging_face, self.secret_manager, self.cymbal]


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    with (
        FakeGoogleOAuth(access_token=TOKEN) as oauth,
        FakeVertex(TOKEN, project=PROJECT) as vertex,
        FakeOpenAI(OPENAI_KEY) as openai,
        FakeAnthropic(ANTHROPIC_KEY) as anthropic,
        FakeHuggingFace(HF_TOKEN) as hugging_face,
        FakeSecretManager(SECRETS, token=TOKEN) as secret_manager,
        FakeCymbal(None) as cymbal,
    ):
        yield Fakes(oauth, vertex, openai, anthropic, hugging_face, secret_manager, cymbal)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory, fakes: Fakes) -> Path:
    """A service-account key whose token endpoint is the fake OAuth server."""
    return service_account_key(tmp_path_factory.mktemp("seed-gcp"), project=PROJECT, token_uri=fakes.oauth.token_uri)


@pytest.fixture(scope="module")
def seed_proxy(database, fakes: Fakes, key_file: Path) -> Iterator[ProxyProcess]:
    """The proxy with every provider pointed at its fake."""
    p = ProxyProcess(
        [
            "--upstream", database.upstream,
            "--google-key-file", str(key_file),
            "--google-project", PROJECT,
            "--google-region", "us-central1",
            "--vertex-base-url", fakes.vertex.base_url,
            "--openai-base-url", fakes.openai.base_url,
            "--anthropic-base-url", fakes.anthropic.base_url,
            "--huggingface-base-url", fakes.hugging_face.base_url,
            "--secret-manager-base-url", fakes.secret_manager.base_url,
            "--model-timeout", "5",
        ],
        superuser_password=database.password,
    ).start()
    yield p
    p.stop()


@dataclass
class Result:
    sql: str
    stdout: str
    stderr: str
    returncode: int

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    @property
    def error(self) -> str:
        """The server's error line (``ERROR:  SQLSTATE: message``), or ''."""
        return next((line for line in self.stderr.splitlines() if "ERROR:" in line), "")


class Section:
    """One documented example's database, reached through the proxy with psql."""

    def __init__(self, proxy: ProxyProcess, dbname: str, fakes: Fakes) -> None:
        self.proxy = proxy
        self.dbname = dbname
        self.fakes = fakes

    def psql(self, sql: str, *, user: str = "postgres", check: bool = True) -> Result:
        out = subprocess.run(
            [
                str(bundled_bin_dir() / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                "-v", "VERBOSITY=verbose", "-d", self.proxy.dsn(user=user, database=self.dbname),
            ],
            input=sql, capture_output=True, text=True, timeout=60,
        )
        result = Result(sql, out.stdout, out.stderr, out.returncode)
        if check:
            assert out.returncode == 0 and not result.error, (
                f"psql failed: {result.error or out.stderr.strip()}\n--- statement:\n{sql.strip()}"
            )
        return result

    def value(self, sql: str) -> str:
        """The single output line of a one-row, one-column SELECT."""
        lines = self.psql(sql).lines
        assert len(lines) == 1, lines
        return lines[0]

    def enable_extension(self) -> None:
        """Each section's step "Créez et activez l'extension google_ml_integration"."""
        assert self.psql(CREATE_EXTENSION).lines == ["CREATE EXTENSION"]

    def model(self, model_id: str) -> dict[str, str | None]:
        """The model's row of google_ml.model_info_view (the 13 documented columns)."""
        row = self.value(
            "SELECT row_to_json(v) FROM google_ml.model_info_view v WHERE model_id = "
            + quote(model_id)
        )
        return json.loads(row)


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.fixture
def section(database, seed_proxy: ProxyProcess, fakes: Fakes) -> Iterator[Section]:
    """A database of its own for one test (the documents' placeholders cannot collide)."""
    with database.scratch("seed") as name:
        for fake in fakes.all():
            fake.reset()
        yield Section(seed_proxy, name, fakes)


@pytest.fixture
def role(database) -> Iterator[str]:
    """A login role that is not a superuser (the documents' NON_SUPER_USER)."""
    name = f"seed_user_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database.direct_dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN")
    yield name
    with psycopg.connect(database.direct_dsn(), autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {name}")


def real_array(text: str) -> list[float]:
    """psql's text form of a real[] (``{0.1,-0.2}``) as floats."""
    assert text.startswith("{") and text.endswith("}"), text[:80]
    return [float(x) for x in text[1:-1].split(",")]


def close_to(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(abs(a - b) < 1e-6 for a, b in zip(got, want, strict=True))


def single_request(fake: FakeProvider) -> RecordedRequest:
    requests = fake.requests
    assert len(requests) == 1, [r.path for r in requests]
    return requests[0]


VERTEX_PATH = f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/"
PRE_REGISTERED = {
    "textembedding-gecko": "text_embedding",
    "text-embedding-gecko@001": "text_embedding",
    "gemini-1.5-pro:generateContent": "generic",
    "gemini-1.5-pro:streamGenerateContent": "generic",
    "gemini-1.0-pro:generateContent": "generic",
}
COLUMNS_13 = [
    "model_id", "model_availability", "model_request_url", "model_provider", "model_type",
    "model_qualified_name", "model_auth_type", "model_auth_id", "header_gen_fn",
    "input_transform_fn", "output_transform_fn", "input_batch_transform_fn",
    "output_batch_transform_fn",
]


# ======================================================= 000 + 001: "Activer l'extension"
@pytest.mark.parametrize("seed", SEEDS_000_001)
class TestEnableExtension:
    """000/001 "Activer l'extension" (steps: ALTER EXTENSION UPDATE, CREATE EXTENSION, GRANT;
    001 adds ALTER SYSTEM)."""

    def test_alter_extension_update(self, seed: str, section: Section) -> None:
        # "Si l'extension google_ml_integration est déjà installée": an older version is.
        section.psql("CREATE EXTENSION google_ml_integration VERSION '1.5.3';")
        assert section.psql(ALTER_EXTENSION_UPDATE).lines == ["ALTER EXTENSION"]
        assert section.value(
            "SELECT extversion FROM pg_extension WHERE extname = 'google_ml_integration'"
        ) == "1.6"

    def test_create_extension_if_not_exists(self, seed: str, section: Section) -> None:
        # Step 1, "Vérifiez que l'indicateur ... enable_model_support est défini sur on".
        assert section.value("SHOW google_ml_integration.enable_model_support") == "on"
        assert section.psql(CREATE_EXTENSION).lines == ["CREATE EXTENSION"]
        assert section.value(
            "SELECT extversion FROM pg_extension WHERE extname = 'google_ml_integration'"
        ) == "1.6"
        again = section.psql(CREATE_EXTENSION)
        assert again.lines == ["CREATE EXTENSION"]
        assert 'extension "google_ml_integration" already exists, skipping' in again.stderr
        # Right after CREATE EXTENSION the pre-registered Vertex AI models are there.
        rows = section.psql(
            "SELECT model_id || '|' || model_type FROM google_ml.model_info_view"
        ).lines
        assert dict(r.split("|") for r in rows) == PRE_REGISTERED

    def test_grant_to_non_super_user(self, seed: str, role: str, section: Section) -> None:
        section.enable_extension()
        create = (
            "CALL google_ml.create_model(model_id => 'granted', model_provider => 'open_ai', "
            "model_qualified_name => 'text-embedding-3-small');"
        )
        denied = section.psql(create, user=role, check=False)
        assert "42501: permission denied for table models" in denied.error
        # Substituted: NON_SUPER_USER is a role of the test's own.
        grant = substitute(GRANT_NON_SUPER_USER, {"NON_SUPER_USER": role})
        assert section.psql(grant).lines == ["GRANT"]
        # "gérer les métadonnées de modèle": the role registers, lists, alters, drops.
        assert section.psql(create, user=role).lines == ["CALL"]
        assert section.psql(
            "SELECT model_request_url FROM google_ml.model_info_view WHERE model_id = 'granted'",
            user=role,
        ).lines == ["https://api.openai.com/v1/embeddings"]
        assert section.psql("CALL google_ml.drop_model('granted');", user=role).lines == ["CALL"]


def test_001_alter_system_enable_model_support(section: Section) -> None:
    """001 (AlloyDB Omni) "Activer l'extension", step 5: ALTER SYSTEM and pg_reload_conf()."""
    section.enable_extension()
    try:
        assert section.psql(ALTER_SYSTEM_ENABLE).lines == ["ALTER SYSTEM", "t"]
        assert section.value("SHOW google_ml_integration.enable_model_support") == "on"
        assert section.value(
            "SELECT setting FROM pg_settings "
            "WHERE name = 'google_ml_integration.enable_model_support'"
        ) == "on"
    finally:
        section.psql(
            "ALTER SYSTEM RESET google_ml_integration.enable_model_support; SELECT pg_reload_conf();"
        )


# ============================= 000 + 001: "Configurer l'authentification à l'aide d'en-têtes"
def header_gen_function_sql() -> str:
    # Substituted: API_KEY, the key the fake Cymbal endpoint is checked for.
    return substitute(HEADER_GEN_FUNCTION, {"'API_KEY'": quote(CYMBAL_KEY)})


@pytest.mark.parametrize("seed", SEEDS_000_001)
class TestHeaderAuthentication:
    """000/001 "Configurer l'authentification à l'aide d'en-têtes": HEADER_GEN_FUNCTION."""

    def test_header_gen_function_created(self, seed: str, section: Section) -> None:
        section.enable_extension()
        assert section.psql(header_gen_function_sql()).lines == ["CREATE FUNCTION"]
        headers = json.loads(section.value("SELECT HEADER_GEN_FUNCTION('m', 'text')"))
        assert headers == {"Content-Type": "application/json", "Authorization": f"Bearer {CYMBAL_KEY}"}

    def test_header_gen_function_authenticates_an_embedding_model(
        self, seed: str, section: Section
    ) -> None:
        # "nom de la fonction ... que vous pouvez utiliser lors de l'enregistrement d'un modèle":
        # the custom endpoint of the seed, with this function instead of a secret.
        section.enable_extension()
        section.psql(header_gen_function_sql())
        section.psql(CYMBAL_TRANSFORMS)
        section.psql(
            "CALL google_ml.create_model(model_id => 'custom-embedding-model', "
            f"model_request_url => {quote(section.fakes.cymbal.url)}, model_provider => 'custom', "
            "model_type => 'text_embedding', generate_headers_fn => 'HEADER_GEN_FUNCTION', "
            "model_in_transform_fn => 'cymbal_text_input_transform', "
            "model_out_transform_fn => 'cymbal_text_output_transform');"
        )
        value = real_array(section.value("SELECT google_ml.embedding('custom-embedding-model', 'AlloyDB Embeddings')"))
        assert close_to(value, embed("AlloyDB Embeddings", CYMBAL_DIM))
        request = single_request(section.fakes.cymbal)
        assert request.headers["authorization"] == f"Bearer {CYMBAL_KEY}"
        assert request.json == {"prompt": ["AlloyDB Embeddings"]}


# ============================ 000 + 001: "Modèles d'embeddings de texte" (pre-registered)
GEMINI_SECTIONS = [
    pytest.param("000+001", where, id=f"seed000+001-{where}")
    for where in ("text-embedding-models", "gemini-model")
]


@pytest.mark.parametrize("seed", SEEDS_000_001)
def test_pre_registered_textembedding_gecko(seed: str, section: Section) -> None:
    """000/001 "Modèles d'embeddings de texte": google_ml.embedding of textembedding-gecko."""
    section.enable_extension()
    value = real_array(section.value(PREREGISTERED_EMBEDDING))
    text = "AlloyDB is a managed, cloud-hosted SQL database service"
    assert close_to(value, FakeVertex.expected_embedding(text, "textembedding-gecko"))  # real[768]
    request = single_request(section.fakes.vertex)
    assert request.path == VERTEX_PATH + "textembedding-gecko:predict"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.json["instances"] == [{"content": text}]


@pytest.mark.parametrize(("seed", "where"), GEMINI_SECTIONS)
def test_pre_registered_gemini_generate_content_as_printed(seed: str, where: str, section: Section) -> None:
    """000/001 "Modèles d'embeddings de texte" and "Modèle Gemini" print the same statement:
    json_array_elements over gemini-1.5-pro:generateContent. Doc erratum: generateContent answers
    one JSON object, so PostgreSQL (like AlloyDB) refuses to take array elements of it. The
    proxy's part is done: the model was called and its object returned."""
    section.enable_extension()
    result = section.psql(PREREGISTERED_GEMINI, check=False)
    # (PostgreSQL 17+: "cannot call json_array_elements on a non-array"; before: "cannot
    # extract elements from an object")
    assert re.search(
        r"22023: cannot (call json_array_elements on a non-array|extract elements from an object)",
        result.error,
    ), result.stderr
    request = single_request(section.fakes.vertex)
    assert request.path == VERTEX_PATH + "gemini-1.5-pro:generateContent"
    assert request.json["contents"][0]["parts"][0]["text"].startswith("For TPCH database schema")


@pytest.mark.parametrize(("seed", "where"), GEMINI_SECTIONS)
def test_pre_registered_gemini_documented_result(seed: str, where: str, section: Section) -> None:
    """The same example as intended: the text of the answer, from generateContent directly and
    (AlloyDB's "Invoke predictions" page) json_array_elements over :streamGenerateContent."""
    section.enable_extension()
    prompt = (
        "For TPCH database schema as mentioned here "
        "https://www.tpc.org/TPC_Documents_Current_Versions/pdf/TPC-H_v3.0.1.pdf , generate a SQL "
        "query to find all supplier names which are located in the India nation."
    )
    direct = PREREGISTERED_GEMINI.replace("json_array_elements(", "(", 1)
    assert json.loads(section.value(direct)) == f"Echo: {prompt}"
    stream = PREREGISTERED_GEMINI.replace(":generateContent", ":streamGenerateContent")
    chunks = [json.loads(line) for line in section.psql(stream).lines]
    assert len(chunks) > 1 and "".join(chunks) == f"Echo: {prompt}"
    assert [r.path.rsplit("/", 1)[1] for r in section.fakes.vertex.requests] == [
        "gemini-1.5-pro:generateContent",
        "gemini-1.5-pro:streamGenerateContent",
    ]


# ============================================ 000 + 001: "Modèles d'embedding Vertex AI"
@pytest.mark.parametrize("seed", SEEDS_000_001)
class TestVertexEmbeddingModels:
    """000/001 "Modèles d'embedding Vertex AI": text-embedding-005, text-multilingual-embedding-002."""

    def test_text_embedding_005(self, seed: str, section: Section) -> None:
        section.enable_extension()
        assert section.psql(VERTEX_TEXT_EMBEDDING_005).lines == ["CALL"]
        model = section.model("text-embedding-005")
        assert model["model_provider"] == "google" and model["model_type"] == "text_embedding"
        assert model["input_transform_fn"] == "google_ml.vertexai_text_embedding_input_transform"
        # "Pour générer des embeddings ..."
        value = real_array(section.value("SELECT google_ml.embedding('text-embedding-005', 'AlloyDB')"))
        assert close_to(value, FakeVertex.expected_embedding("AlloyDB", "text-embedding-005"))
        assert single_request(section.fakes.vertex).path == VERTEX_PATH + "text-embedding-005:predict"

    def test_text_multilingual_embedding_002_as_printed(self, seed: str, section: Section) -> None:
        """Doc erratum: no comma after model_auth_type's value; a syntax error anywhere."""
        section.enable_extension()
        result = section.psql(VERTEX_MULTILINGUAL_002, check=False)
        assert '42601: syntax error at or near "model_in_transform_fn"' in result.error

    def test_text_multilingual_embedding_002(self, seed: str, section: Section) -> None:
        section.enable_extension()
        # Fixed: the missing comma.
        sql = substitute(
            VERTEX_MULTILINGUAL_002,
            {"'alloydb_service_agent_iam'\n": "'alloydb_service_agent_iam',\n"},
        )
        assert section.psql(sql).lines == ["CALL"]
        model = section.model("text-multilingual-embedding-002")
        assert model["output_transform_fn"] == "google_ml.vertexai_text_embedding_output_transform"
        value = real_array(
            section.value("SELECT google_ml.embedding('text-multilingual-embedding-002', 'Bonjour')")
        )
        assert close_to(value, FakeVertex.expected_embedding("Bonjour", "text-multilingual-embedding-002"))


# ===================================== 000 + 001: "Modèle d'embedding textuel Open AI"
def openai_secret_sql() -> str:
    # Substituted: the path names the secret the fake Secret Manager holds.
    return substitute(
        OPENAI_SECRET,
        {"projects/PROJECT_ID/secrets/SECRET_MANAGER_SECRET_ID/versions/VERSION_NUMBER": sm_path("openai-api-key")},
    )


OPENAI_MODELS = [
    pytest.param("000+001", name, dim, id=f"seed000+001-{name}")
    for name, dim in (
        ("text-embedding-ada-002", 1536),
        ("text-embedding-3-small", 1536),
        ("text-embedding-3-large", 3072),
    )
]


@pytest.mark.parametrize("seed", SEEDS_000_001)
def test_openai_create_sm_secret(seed: str, section: Section) -> None:
    """000/001 "Modèle d'embedding textuel Open AI", step 4: the secret is a path, never a value."""
    section.enable_extension()
    assert section.psql(openai_secret_sql()).lines == ["CALL"]
    assert section.psql("SELECT secret_id, secret_path FROM google_ml.sm_secrets").lines == [
        f"SECRET_ID|{sm_path('openai-api-key')}"
    ]


@pytest.mark.parametrize(("seed", "qualified_name", "dim"), OPENAI_MODELS)
def test_openai_create_model_and_embedding(seed: str, qualified_name: str, dim: int, section: Section) -> None:
    """000/001 "Modèle d'embedding textuel Open AI", step 5, for text-embedding-ada-002 and (the
    document: "en suivant les mêmes étapes") text-embedding-3-small and -3-large; then
    google_ml.embedding ("Pour générer des embeddings ...")."""
    section.enable_extension()
    section.psql(openai_secret_sql())
    sql = OPENAI_MODEL
    if qualified_name != "text-embedding-ada-002":
        # Substituted: the other qualified names the document says register the same way.
        sql = substitute(sql, {"'text-embedding-ada-002'": quote(qualified_name)})
    assert section.psql(sql).lines == ["CALL"]
    model = section.model("MODEL_ID")
    assert model["model_request_url"] == "https://api.openai.com/v1/embeddings"
    assert model["input_transform_fn"] == "google_ml.openai_text_embedding_input_transform"
    assert model["output_transform_fn"] == "google_ml.openai_text_embedding_output_transform"
    assert (model["model_auth_type"], model["model_auth_id"]) == ("secret_manager", "SECRET_ID")
    value = real_array(section.value("SELECT google_ml.embedding('MODEL_ID', 'AlloyDB is ...')"))
    assert len(value) == dim
    assert close_to(value, FakeOpenAI.expected_embedding("AlloyDB is ...", qualified_name))
    request = single_request(section.fakes.openai)
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"  # from Secret Manager
    assert request.json["model"] == qualified_name and request.json["input"] == ["AlloyDB is ..."]


# ============================ 000 + 001: "Modèle d'embedding de texte hébergé en interne"
def cymbal_secret_sql() -> str:
    # Substituted: the path names the secret the fake Secret Manager holds.
    return substitute(SM_SECRET, {SM_SECRET_PATH: sm_path("cymbal-api-key")})


def cymbal_model_sql(section: Section) -> str:
    # Substituted: REQUEST_URL (e.g. https://cymbal.com/models/text/embeddings/v1) is the fake's.
    return substitute(CUSTOM_MODEL, {"'REQUEST_URL'": quote(section.fakes.cymbal.url)})


@pytest.mark.parametrize("seed", SEEDS_000_001)
class TestCustomHostedEmbeddingModel:
    """000/001 "Modèle d'embedding de texte hébergé en interne" (the Cymbal endpoint)."""

    def test_create_sm_secret(self, seed: str, section: Section) -> None:
        section.enable_extension()
        assert section.psql(cymbal_secret_sql()).lines == ["CALL"]

    def test_transform_functions(self, seed: str, section: Section) -> None:
        section.enable_extension()
        assert section.psql(CYMBAL_TRANSFORMS).lines == ["CREATE FUNCTION", "CREATE FUNCTION"]
        # The shapes 003 explains: one prompt in, the first vector of the answer out.
        assert json.loads(section.value("SELECT cymbal_text_input_transform('m', 'AlloyDB Embeddings')")) == {
            "prompt": ["AlloyDB Embeddings"]
        }
        assert section.value(
            "SELECT cymbal_text_output_transform('m', '[[0.3522231, -0.35932037]]')"
        ) == "{0.3522231,-0.35932037}"

    def test_create_model(self, seed: str, section: Section) -> None:
        section.enable_extension()
        section.psql(cymbal_secret_sql())
        section.psql(CYMBAL_TRANSFORMS)
        assert section.psql(cymbal_model_sql(section)).lines == ["CALL"]
        model = section.model("MODEL_ID")
        assert model["model_provider"] == "custom" and model["model_type"] == "text_embedding"
        assert model["input_transform_fn"] == "cymbal_text_input_transform"
        assert model["output_transform_fn"] == "cymbal_text_output_transform"
        assert model["model_qualified_name"] == "MODEL_QUALIFIED_NAME"

    def test_embedding(self, seed: str, section: Section) -> None:
        section.enable_extension()
        section.psql(cymbal_secret_sql())
        section.psql(CYMBAL_TRANSFORMS)
        section.psql(cymbal_model_sql(section))
        value = real_array(section.value("SELECT google_ml.embedding('MODEL_ID', 'AlloyDB Embeddings')"))
        assert close_to(value, embed("AlloyDB Embeddings", CYMBAL_DIM))  # real[50]
        request = single_request(section.fakes.cymbal)
        assert request.json == {"prompt": ["AlloyDB Embeddings"]}  # the input transform's body
        assert request.headers["authorization"] == f"Bearer {CYMBAL_KEY}"  # the secret


# ======================================== 000 + 001: "Modèle générique sur Hugging Face"
def hugging_face_model(section: Section) -> None:
    # Substituted: the path names the secret the fake Secret Manager holds.
    assert section.psql(substitute(SM_SECRET, {SM_SECRET_PATH: sm_path("hf-token")})).lines == ["CALL"]
    # REQUEST_URL: the document's example value (the proxy sends it to the fake:
    # --huggingface-base-url replaces the public origin).
    sql = substitute(
        HUGGING_FACE_MODEL,
        {"'REQUEST_URL'": "'https://api-inference.huggingface.co/models/facebook/bart-large-mnli'"},
    )
    assert section.psql(sql).lines == ["CALL"]


@pytest.mark.parametrize("seed", SEEDS_000_001)
class TestHuggingFaceGenericModel:
    """000/001 "Modèle générique sur Hugging Face": secret and facebook/bart-large-mnli."""

    def test_create_sm_secret_and_model(self, seed: str, section: Section) -> None:
        section.enable_extension()
        hugging_face_model(section)
        model = section.model("MODEL_ID")
        assert (model["model_provider"], model["model_type"]) == ("hugging_face", "generic")
        assert (model["model_auth_type"], model["model_auth_id"]) == ("secret_manager", "SECRET_ID")

    def test_predict_row(self, seed: str, section: Section) -> None:
        """The registered model called as AlloyDB's "Invoke predictions" page does (zero-shot
        classification): the provider's JSON, best label first."""
        section.enable_extension()
        hugging_face_model(section)
        answer = json.loads(section.value(f"SELECT google_ml.predict_row('MODEL_ID', {quote(HF_BODY)})"))
        assert sorted(item["label"] for item in answer) == ["faq", "legal", "refund"]
        assert abs(sum(item["score"] for item in answer) - 1) < 1e-6
        request = single_request(section.fakes.hugging_face)
        assert request.path == "/models/facebook/bart-large-mnli"
        assert request.headers["authorization"] == f"Bearer {HF_TOKEN}"
        assert request.json == json.loads(HF_BODY)  # the body goes unchanged


# ============================================ 000 + 001: "Modèle générique Anthropic"
ANTHROPIC_URL = {"'REQUEST_URL'": "'https://api.anthropic.com/v1/messages'"}


@pytest.mark.parametrize("seed", SEEDS_000_001)
class TestAnthropicGenericModel:
    """000/001 "Modèle générique Anthropic": tabs "Secret Manager" and "En-tête d'autorisation".
    REQUEST_URL is the document's example value; --anthropic-base-url sends it to the fake."""

    def test_secret_manager_tab(self, seed: str, section: Section) -> None:
        section.enable_extension()
        # Substituted: the path names the secret the fake Secret Manager holds.
        section.psql(substitute(SM_SECRET, {SM_SECRET_PATH: sm_path("anthropic-api-key")}))
        assert section.psql(substitute(ANTHROPIC_MODEL_SECRET, ANTHROPIC_URL)).lines == ["CALL"]
        model = section.model("MODEL_ID")
        assert model["header_gen_fn"] == "google_ml.anthropic_claude_header_gen_fn"
        answer = json.loads(section.value(f"SELECT google_ml.predict_row('MODEL_ID', {quote(ANTHROPIC_BODY)})"))
        assert answer["type"] == "message" and answer["content"][0]["text"] == "Echo: Hello, world"
        request = single_request(section.fakes.anthropic)
        assert request.headers["x-api-key"] == ANTHROPIC_KEY
        assert request.headers["anthropic-version"] == "2023-06-01"
        assert request.json == json.loads(ANTHROPIC_BODY)

    def test_header_tab_registration(self, seed: str, section: Section) -> None:
        section.enable_extension()
        # Substituted: ANTHROPIC_API_KEY, the fake's key; ANTHROPIC_VERSION, the document's
        # example value (the fake, like Anthropic, refuses other versions).
        sample = substitute(
            ANTHROPIC_SAMPLE_HEADER_GEN_FN,
            {"'ANTHROPIC_API_KEY'": quote(ANTHROPIC_KEY), "'ANTHROPIC_VERSION'": "'2023-06-01'"},
        )
        assert section.psql(sample).lines == ["CREATE FUNCTION"]
        assert json.loads(section.value("SELECT anthropic_sample_header_gen_fn('m', '{}')")) == {
            "x-api-key": ANTHROPIC_KEY,
            "anthropic-version": "2023-06-01",
        }
        assert section.psql(substitute(ANTHROPIC_MODEL_HEADERS, ANTHROPIC_URL)).lines == ["CALL"]
        model = section.model("MODEL_ID")
        assert (model["model_auth_type"], model["header_gen_fn"]) == (
            None,
            "google_ml.anthropic_claude_header_gen_fn",
        )

    def test_header_tab_with_the_sample_function(self, seed: str, section: Section) -> None:
        """The tab's other option ("ou créez une fonction de génération d'en-tête"): the model
        registered with anthropic_sample_header_gen_fn, which carries the key."""
        section.enable_extension()
        section.psql(
            substitute(
                ANTHROPIC_SAMPLE_HEADER_GEN_FN,
                {"'ANTHROPIC_API_KEY'": quote(ANTHROPIC_KEY), "'ANTHROPIC_VERSION'": "'2023-06-01'"},
            )
        )
        sql = substitute(
            ANTHROPIC_MODEL_HEADERS,
            {**ANTHROPIC_URL, "'google_ml.anthropic_claude_header_gen_fn'": "'anthropic_sample_header_gen_fn'"},
        )
        section.psql(sql)
        answer = json.loads(section.value(f"SELECT google_ml.predict_row('MODEL_ID', {quote(ANTHROPIC_BODY)})"))
        assert answer["content"][0]["text"] == "Echo: Hello, world"
        request = single_request(section.fakes.anthropic)
        assert request.headers["x-api-key"] == ANTHROPIC_KEY  # from the header function


# ================================================================ 003: the reference
def ref_secret_sql(version: int = 1, sql: str = REF_CREATE_SM_SECRET) -> str:
    # Substituted: the path names the secret the fake Secret Manager holds.
    return substitute(sql, {SM_SECRET_PATH: sm_path("cymbal-api-key", version)})


def ref_model_substitutions(section: Section, header_fn: str = "header_gen_fn") -> dict[str, str]:
    """The 003 template's placeholders for the Cymbal endpoint, with 003's own functions.
    Substituted because the placeholders are not values the procedure accepts (an enum, a
    URL, a function that must exist)."""
    return {
        "'REQUEST_URL'": quote(section.fakes.cymbal.url),
        "'PROVIDER_ID'": "'custom'",
        "'MODEL_TYPE'": "'text_embedding'",
        "'AUTH_TYPE'": "'secret_manager'",
        "'AUTH_ID'": "'SECRET_ID'",
        "'GENERATE_HEADER_FUNCTION'": quote(header_fn),
        "'INPUT_TRANSFORM_FUNCTION'": "'cymbal_text_input_transform'",
        "'OUTPUT_TRANSFORM_FUNCTION'": "'cymbal_text_output_transform'",
    }


def ref_functions(section: Section) -> None:
    assert section.psql(REF_CYMBAL_INPUT_TRANSFORM).lines == ["CREATE FUNCTION"]
    assert section.psql(REF_CYMBAL_OUTPUT_TRANSFORM).lines == ["CREATE FUNCTION"]
    assert section.psql(REF_HEADER_GEN_FN).lines == ["CREATE FUNCTION"]
    # Substituted: API_KEY, the key the test checks on the request.
    assert section.psql(substitute(REF_HEADER_GEN_FUNC_EMBEDDING, {"'API_KEY'": quote(CYMBAL_KEY)})).lines == [
        "CREATE FUNCTION"
    ]


def ref_model(section: Section) -> None:
    section.enable_extension()
    section.psql(ref_secret_sql())
    ref_functions(section)
    section.psql(substitute(REF_CREATE_MODEL, ref_model_substitutions(section)))


class TestReferenceModels:
    """003 "Modelos": create_model, alter_model, drop_model, list_model, model_info_view."""

    def test_create_model(self, section: Section) -> None:
        section.enable_extension()
        section.psql(ref_secret_sql())
        ref_functions(section)
        sql = substitute(REF_CREATE_MODEL, ref_model_substitutions(section))
        assert section.psql(sql).lines == ["CALL"]
        assert section.model("MODEL_ID") == {
            "model_id": "MODEL_ID",
            "model_availability": "AVAILABLE",
            "model_request_url": section.fakes.cymbal.url,
            "model_provider": "custom",
            "model_type": "text_embedding",
            "model_qualified_name": "MODEL_QUALIFIED_NAME",
            "model_auth_type": "secret_manager",
            "model_auth_id": "SECRET_ID",
            "header_gen_fn": "header_gen_fn",
            "input_transform_fn": "cymbal_text_input_transform",
            "output_transform_fn": "cymbal_text_output_transform",
            "input_batch_transform_fn": None,
            "output_batch_transform_fn": None,
        }

    def test_create_model_then_embedding(self, section: Section) -> None:
        """The registered endpoint in use: 003's transforms shape the request (its curl) and
        the answer (its example response), header_gen_fn adds ``version: 2024-01-01``."""
        ref_model(section)
        value = real_array(section.value("SELECT google_ml.embedding('MODEL_ID', 'AlloyDB Embeddings')"))
        assert close_to(value, embed("AlloyDB Embeddings", CYMBAL_DIM))
        request = single_request(section.fakes.cymbal)
        assert request.json == {"prompt": ["AlloyDB Embeddings"]}
        assert request.headers["version"] == "2024-01-01"

    def test_alter_model(self, section: Section) -> None:
        ref_model(section)
        # Substituted as for create_model, with the other header function of 003 (the API
        # key one), so that the change shows.
        sql = substitute(REF_ALTER_MODEL, ref_model_substitutions(section, "header_gen_func"))
        assert section.psql(sql).lines == ["CALL"]
        assert section.model("MODEL_ID")["header_gen_fn"] == "header_gen_func"

    def test_list_model(self, section: Section) -> None:
        ref_model(section)
        record = section.value(REF_LIST_MODEL)  # RETURNS record: one composite value
        assert record == (
            f"(MODEL_ID,AVAILABLE,{section.fakes.cymbal.url},custom,text_embedding,MODEL_QUALIFIED_NAME,"
            "secret_manager,SECRET_ID,header_gen_fn,cymbal_text_input_transform,"
            "cymbal_text_output_transform,,)"
        )

    def test_model_info_view(self, section: Section) -> None:
        ref_model(section)
        result = section.psql("\\pset tuples_only off\n" + REF_MODEL_INFO_VIEW)
        assert result.lines[0].split("|") == COLUMNS_13
        ids = [line.split("|")[0] for line in result.lines[1:-1]]
        assert ids == sorted([*PRE_REGISTERED, "MODEL_ID"])
        assert result.lines[-1] == "(6 rows)"

    def test_drop_model(self, section: Section) -> None:
        ref_model(section)
        assert section.psql(REF_DROP_MODEL).lines == ["CALL"]
        gone = section.psql(REF_LIST_MODEL, check=False)
        assert "42704: Model does not exist for model_id: MODEL_ID" in gone.error


class TestReferenceSecrets:
    """003 "Secrets": create_sm_secret, alter_sm_secret, drop_sm_secret."""

    def test_create_alter_drop_sm_secret(self, section: Section) -> None:
        section.enable_extension()
        assert section.psql(ref_secret_sql()).lines == ["CALL"]
        assert section.value("SELECT secret_path FROM google_ml.sm_secrets WHERE secret_id = 'SECRET_ID'") == sm_path(
            "cymbal-api-key"
        )
        # VERSION_NUMBER: version 2 this time, so that the change shows.
        assert section.psql(ref_secret_sql(2, REF_ALTER_SM_SECRET)).lines == ["CALL"]
        assert section.value("SELECT secret_path FROM google_ml.sm_secrets WHERE secret_id = 'SECRET_ID'") == sm_path(
            "cymbal-api-key", 2
        )
        assert section.psql(REF_DROP_SM_SECRET).lines == ["CALL"]
        assert section.value("SELECT count(*) FROM google_ml.sm_secrets") == "0"

    def test_altered_secret_is_the_one_used(self, section: Section) -> None:
        """alter_sm_secret in use: an OpenAI model (000's) whose secret's version 1 was revoked
        works once the secret points at version 2."""
        section.enable_extension()
        # Substituted: the path names the fake Secret Manager's rotated OpenAI key.
        section.psql(substitute(REF_CREATE_SM_SECRET, {SM_SECRET_PATH: sm_path("openai-api-key-rotated")}))
        # Setup, not an example of 003: a text embedding model using SECRET_ID.
        section.psql(
            "CALL google_ml.create_model(model_id => 'MODEL_ID', model_provider => 'open_ai', "
            "model_qualified_name => 'text-embedding-3-small', model_auth_id => 'SECRET_ID');"
        )
        call = "SELECT array_length(google_ml.embedding('MODEL_ID', 'x'), 1)"
        revoked = section.psql(call, check=False)
        assert "401" in revoked.error and "sk-seed-revoked" not in revoked.stderr
        section.psql(substitute(REF_ALTER_SM_SECRET, {SM_SECRET_PATH: sm_path("openai-api-key-rotated", 2)}))
        assert section.value(call) == "1536"
        assert section.fakes.openai.requests[-1].headers["authorization"] == f"Bearer {OPENAI_KEY}"


OPENAI_SETUP = (
    # Setup, not an example of 003: a text embedding model for MODEL_ID (000's OpenAI one).
    f"CALL google_ml.create_sm_secret('SECRET_ID', {quote(sm_path('openai-api-key'))});"
    "CALL google_ml.create_model(model_id => 'MODEL_ID', model_provider => 'open_ai', "
    "model_qualified_name => 'text-embedding-3-small', model_auth_id => 'SECRET_ID');"
)


class TestReferencePredictionFunctions:
    """003 "Funções de previsão": google_ml.embedding and google_ml.predict_row."""

    def test_embedding_as_printed(self, section: Section) -> None:
        """Doc erratum: the argument is named ``contents``; the function's parameter (here as in
        AlloyDB) is ``content``, so PostgreSQL finds no such function."""
        section.enable_extension()
        section.psql(OPENAI_SETUP)
        result = section.psql(REF_EMBEDDING, check=False)
        assert (
            "42883: function google_ml.embedding(model_id => unknown, contents => unknown) does not exist"
            in result.error
        )

    def test_embedding(self, section: Section) -> None:
        section.enable_extension()
        section.psql(OPENAI_SETUP)
        # Fixed: content => (the erratum); CONTENT stays the text to embed.
        sql = substitute(REF_EMBEDDING, {"contents =>": "content =>"})
        value = real_array(section.value(sql))
        assert close_to(value, FakeOpenAI.expected_embedding("CONTENT", "text-embedding-3-small"))

    def test_predict_row(self, section: Section) -> None:
        section.enable_extension()
        # Setup, not an example of 003: a generic model for MODEL_ID (000's Anthropic one).
        section.psql(
            f"CALL google_ml.create_sm_secret('SECRET_ID', {quote(sm_path('anthropic-api-key'))});"
            "CALL google_ml.create_model(model_id => 'MODEL_ID', model_provider => 'anthropic', "
            "model_qualified_name => 'claude-3-opus-20240229', model_auth_id => 'SECRET_ID');"
        )
        # Substituted: REQUEST_BODY, "os parâmetros ... no formato JSON" (not JSON as printed).
        sql = substitute(REF_PREDICT_ROW, {"'REQUEST_BODY'": quote(ANTHROPIC_BODY)})
        answer = json.loads(section.value(sql))
        assert answer["content"] == [{"type": "text", "text": "Echo: Hello, world"}]
        assert single_request(section.fakes.anthropic).json == json.loads(ANTHROPIC_BODY)


def with_body(signature: str, body: str) -> str:
    """A signature of 003 made a function: the same declaration, with a body."""
    assert signature.endswith(";")
    return f"{signature[:-1]} LANGUAGE sql AS $$ {body} $$;"


class TestReferenceFunctionContracts:
    """003 "Funções de transformação" and "Função de geração de cabeçalho HTTP": the signatures
    (not statements: declarations without a body) and the examples."""

    def test_signatures_are_declarations_not_statements(self, section: Section) -> None:
        section.enable_extension()
        for signature in (
            REF_INPUT_TRANSFORM_SIGNATURE,
            REF_OUTPUT_TRANSFORM_SIGNATURE,
            REF_HEADERS_SIGNATURE_EMBEDDING,
            REF_HEADERS_SIGNATURE_PREDICT,
        ):
            # 42P13 invalid_function_definition: "no language specified" (PostgreSQL 18) or
            # "no function body specified"
            error = section.psql(signature, check=False).error
            assert re.search(r"42P13: no (language|function body) specified", error), error

    def test_functions_of_these_signatures_are_accepted(self, section: Section) -> None:
        section.enable_extension()
        section.psql(
            with_body(REF_INPUT_TRANSFORM_SIGNATURE, "SELECT json_build_object('prompt', json_build_array($2))")
            + with_body(REF_OUTPUT_TRANSFORM_SIGNATURE, "SELECT ARRAY(SELECT json_array_elements_text($2->0))::real[]")
            + with_body(REF_HEADERS_SIGNATURE_EMBEDDING, "SELECT json_build_object('version', '2024-01-01')")
            + with_body(REF_HEADERS_SIGNATURE_PREDICT, "SELECT json_build_object('version', '2024-01-01')")
        )
        url = quote(section.fakes.cymbal.url)
        assert section.psql(
            f"CALL google_ml.create_model(model_id => 'embed', model_request_url => {url}, "
            "model_type => 'text_embedding', generate_headers_fn => 'GENERATE_HEADERS', "
            "model_in_transform_fn => 'INPUT_TRANSFORM_FUNCTION', "
            "model_out_transform_fn => 'OUTPUT_TRANSFORM_FUNCTION');"
            f"CALL google_ml.create_model(model_id => 'generic', model_request_url => {url}, "
            "generate_headers_fn => 'GENERATE_HEADERS');"
        ).lines == ["CALL", "CALL"]

    def test_transform_examples(self, section: Section) -> None:
        section.enable_extension()
        ref_functions(section)
        # 003's curl request body and (the first values of) its example response.
        assert json.loads(section.value("SELECT cymbal_text_input_transform('m', 'AlloyDB Embeddings')")) == {
            "prompt": ["AlloyDB Embeddings"]
        }
        response = "[[ 0.3522231, -0.35932037, 0.10156056 ]]"
        assert real_array(section.value(f"SELECT cymbal_text_output_transform('m', {quote(response)})")) == [
            0.3522231,
            -0.35932037,
            0.10156056,
        ]

    def test_header_gen_fn_version_header(self, section: Section) -> None:
        """003 "Exemplo de função de geração de cabeçalho": the version header of its curl."""
        section.enable_extension()
        ref_functions(section)
        url = quote(section.fakes.cymbal.url)
        section.psql(
            f"CALL google_ml.create_model(model_id => 'cymbal', model_request_url => {url}, "
            "model_type => 'text_embedding', generate_headers_fn => 'header_gen_fn', "
            "model_in_transform_fn => 'cymbal_text_input_transform', "
            "model_out_transform_fn => 'cymbal_text_output_transform');"
        )
        value = real_array(section.value("SELECT google_ml.embedding('cymbal', 'AlloyDB Embeddings')"))
        assert close_to(value, embed("AlloyDB Embeddings", CYMBAL_DIM))
        request = single_request(section.fakes.cymbal)
        assert request.headers["version"] == "2024-01-01"
        assert request.headers["content-type"].startswith("application/json")

    def test_header_gen_func_api_key_embedding_model(self, section: Section) -> None:
        """003 "Função de geração de cabeçalho usando a chave de API", modelo de embedding."""
        section.enable_extension()
        ref_functions(section)
        url = quote(section.fakes.cymbal.url)
        section.psql(
            f"CALL google_ml.create_model(model_id => 'cymbal', model_request_url => {url}, "
            "model_type => 'text_embedding', generate_headers_fn => 'header_gen_func', "
            "model_in_transform_fn => 'cymbal_text_input_transform', "
            "model_out_transform_fn => 'cymbal_text_output_transform');"
        )
        section.value("SELECT array_length(google_ml.embedding('cymbal', 'AlloyDB Embeddings'), 1)")
        assert single_request(section.fakes.cymbal).headers["authorization"] == CYMBAL_KEY

    def test_header_gen_func_api_key_generic_model(self, section: Section) -> None:
        """003 "Função de geração de cabeçalho usando a chave de API", modelo genérico: the
        Anthropic headers, so an Anthropic model needs no secret."""
        section.enable_extension()
        # Substituted: API_KEY, the fake Anthropic's key.
        sql = substitute(REF_HEADER_GEN_FUNC_GENERIC, {"'API_KEY'": quote(ANTHROPIC_KEY)})
        assert section.psql(sql).lines == ["CREATE FUNCTION"]
        section.psql(
            "CALL google_ml.create_model(model_id => 'claude', model_provider => 'anthropic', "
            "model_request_url => 'https://api.anthropic.com/v1/messages', "
            "generate_headers_fn => 'header_gen_func');"
        )
        answer = json.loads(section.value(f"SELECT google_ml.predict_row('claude', {quote(ANTHROPIC_BODY)})"))
        assert answer["content"][0]["text"] == "Echo: Hello, world"
        assert single_request(section.fakes.anthropic).headers["x-api-key"] == ANTHROPIC_KEY


def test_reference_generate_request_url(section: Section) -> None:
    """003 "Geração de URL da solicitação": GENERATE_REQUEST_URL(provider, model_type,
    model_qualified_name, model_region DEFAULT NULL) is google_ml.generate_model_request_url."""
    section.enable_extension()
    args = re.search(r"\((.*)\)$", REF_GENERATE_REQUEST_URL_SIGNATURE)
    assert args is not None
    names = [a.split()[0] for a in args.group(1).split(", ")]
    assert names == ["provider", "model_type", "model_qualified_name", "model_region"]
    assert section.value(
        "SELECT google_ml.generate_model_request_url(provider => 'google', model_type => 'text_embedding', "
        "model_qualified_name => 'text-embedding-005')"
    ) == "publishers/google/models/text-embedding-005"
    assert section.value(
        "SELECT google_ml.generate_model_request_url(provider => 'google', model_type => 'text_embedding', "
        "model_qualified_name => 'text-embedding-005', model_region => 'europe-west1')"
    ) == "locations/europe-west1/publishers/google/models/text-embedding-005"
    assert section.value(
        "SELECT google_ml.generate_model_request_url('open_ai', 'text_embedding', 'text-embedding-3-large')"
    ) == "https://api.openai.com/v1/embeddings"


BUILTIN = [
    ("google", "text-embedding-gecko@001", "text_embedding"),
    ("google", "text-embedding-gecko@003", "text_embedding"),
    ("google", "text-embedding-004", "text_embedding"),
    ("google", "text-embedding-005", "text_embedding"),
    ("google", "text-embedding-preview-0815", "text_embedding"),
    ("google", "text-multilingual-embedding-002", "text_embedding"),
    ("open_ai", "text-embedding-ada-002", "text_embedding"),
    ("open_ai", "text-embedding-3-small", "text_embedding"),
    ("open_ai", "text-embedding-3-large", "text_embedding"),
    ("anthropic", "claude-3-opus-20240229", "generic"),
    ("anthropic", "claude-3-sonnet-20240229", "generic"),
    ("anthropic", "claude-3-haiku-20240307", "generic"),
]


def test_reference_supported_models(section: Section) -> None:
    """003 "Modelos compatíveis": the pre-registered Vertex AI models are there, and each model
    with built-in support registers by provider and qualified name alone."""
    section.enable_extension()
    rows = section.psql("SELECT model_id || '|' || model_type FROM google_ml.model_info_view").lines
    assert dict(r.split("|") for r in rows) == PRE_REGISTERED
    calls = "".join(
        f"CALL google_ml.create_model(model_id => {quote(p + '/' + q)}, model_provider => {quote(p)}, "
        f"model_qualified_name => {quote(q)});"
        for p, q, _ in BUILTIN
    )
    assert section.psql(calls).lines == ["CALL"] * len(BUILTIN)
    for provider, name, model_type in BUILTIN:
        model = section.model(f"{provider}/{name}")
        assert model["model_type"] == model_type, name
        assert model["model_request_url"], name
        if provider == "anthropic":
            assert model["header_gen_fn"] == "google_ml.anthropic_claude_header_gen_fn"
        else:
            assert model["input_transform_fn"] and model["output_transform_fn"], name


# ============================================== SPEC §4 (not in the seeds): usable anywhere
def spec_setup(section: Section, *, vector: bool = True) -> None:
    section.enable_extension()
    section.psql(("CREATE EXTENSION IF NOT EXISTS vector;" if vector else "") + OPENAI_SETUP.replace("MODEL_ID", "m"))


class TestSpecUsableAnywhere:
    """SPEC §4's examples of calls "wherever SQL allows an expression" (not in the seeds:
    AlloyDB's other pages), with the OpenAI model of 000 as ``m``."""

    def test_pgvector_cast_insert_and_update(self, section: Section, pgvector: None) -> None:
        spec_setup(section)
        assert section.value("SELECT vector_dims(embedding('m', 'q')::vector)") == "1536"
        section.psql(
            "CREATE TABLE items (id int PRIMARY KEY, content text, emb vector(1536));"
            "INSERT INTO items(id, content, emb) VALUES (1, 'x', embedding('m', 'x')::vector);"
            "INSERT INTO items(id, content) SELECT i, 'doc ' || i FROM generate_series(2, 20) i;"
            "UPDATE items SET emb = google_ml.embedding('m', content)::vector WHERE emb IS NULL;"
        )
        assert section.value("SELECT count(*) FROM items WHERE emb IS NOT NULL") == "20"
        nearest = section.psql(
            "SELECT id FROM items ORDER BY emb <=> google_ml.embedding('m', $1)::vector LIMIT 1 \\bind 'doc 7' \\g"
        ).lines
        assert nearest == ["7"]

    def test_generated_column(self, section: Section, pgvector: None) -> None:
        spec_setup(section)
        section.psql(
            "CREATE TABLE d (content text, emb vector(1536) "
            "GENERATED ALWAYS AS (embedding('m', content)::vector) STORED);"
        )
        section.psql("INSERT INTO d (content) VALUES ('AlloyDB is ...');")
        emb = section.value("SELECT emb::real[] FROM d")
        assert close_to(real_array(emb), FakeOpenAI.expected_embedding("AlloyDB is ...", "text-embedding-3-small"))

    def test_view(self, section: Section) -> None:
        spec_setup(section, vector=False)  # real[]: no pgvector needed (PostgreSQL 15 CI)
        section.psql(
            "CREATE TABLE docs (body text); INSERT INTO docs VALUES ('a'), ('b');"
            "CREATE VIEW docs_emb AS SELECT body, google_ml.embedding('m', body) AS emb FROM docs;"
        )
        assert section.psql("SELECT body, array_length(emb, 1) FROM docs_emb ORDER BY body").lines == [
            "a|1536",
            "b|1536",
        ]

    def test_trigger(self, section: Section) -> None:
        spec_setup(section, vector=False)  # real[]: no pgvector needed (PostgreSQL 15 CI)
        section.psql(
            "CREATE TABLE docs (body text, emb real[]);"
            "CREATE FUNCTION docs_embed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "NEW.emb := google_ml.embedding('m', NEW.body); RETURN NEW; END $$;"
            "CREATE TRIGGER docs_embed BEFORE INSERT ON docs FOR EACH ROW EXECUTE FUNCTION docs_embed();"
        )
        section.psql("INSERT INTO docs (body) VALUES ('a'), ('b');")
        assert section.value("SELECT count(*) FROM docs WHERE array_length(emb, 1) = 1536") == "2"
