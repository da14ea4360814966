"""Secrets and credentials: the env/file/Secret Manager backends, the caching and coalescing
resolver, the proxy's Google credentials (service-account key, ADC) against a local OAuth token
endpoint, ModelCredentials for the engine, and that no secret value ever reaches an error
message or a log line. Real fakes over real sockets; time is injected, nothing sleeps."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.engine.engine import Engine
from proxy.engine.errors import ModelCallError, ModelConfigError
from proxy.engine.models import ModelConfig
from proxy.engine.settings import EngineSettings
from proxy.secrets import (
    ENV,
    FILE,
    SECRET_MANAGER,
    CredentialError,
    EnvSecrets,
    FileSecrets,
    GoogleAuthError,
    GoogleCredentials,
    ModelCredentials,
    SecretError,
    SecretManagerSecrets,
    SecretModelConfig,
    SecretResolver,
    crc32c,
    default_resolver,
    scheme_of,
)
from tests.fakes import FakeOpenAI, FakeSecretManager, FakeVertex
from tests.fakes import crc32c as fake_crc32c
from tests.fakes.google_oauth import JWT_BEARER, FakeGoogleOAuth

pytestmark = pytest.mark.timeout(30)

EMAIL = "pg-model-proxy@test-project.iam.gserviceaccount.com"
ACCESS_TOKEN = "ya29.fake-access-token"
SM_PATH = "projects/test-project/secrets/openai-key/versions/1"
LEAK = "sk-LEAK-4b1d9e7c"  # the secret value the no-leak tests hunt for


# ---------------------------------------------------------------------- helpers and fixtures
class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StaticTokens:
    """A TokenSource handing out `tokens` in turn: the next one on each forced refresh."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.refreshes = 0

    async def token(self, *, refresh: bool = False) -> str:
        if refresh:
            self.refreshes += 1
        return self.tokens[min(self.refreshes, len(self.tokens) - 1)]


class FailingTokens:
    async def token(self, *, refresh: bool = False) -> str:
        raise GoogleAuthError("Google refused an access token: invalid_grant")


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class CountingBackend:
    """Answers `value` (or raises the queued errors first), counting fetches."""

    def __init__(self, value: str = "v", errors: list[Exception] | None = None) -> None:
        self.value = value
        self.errors = list(errors or [])
        self.calls = 0

    async def get(self, path: str) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return f"{self.value}:{self.calls}"


class GatedBackend:
    """Blocks every fetch until `release` is set; `started` is set when one begins."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def get(self, path: str) -> str:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return f"value of {path}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def key_body(key: rsa.RSAPrivateKey) -> list[str]:
    """Lines of the PEM body: none may appear in a message."""
    return [line for line in pem(key).splitlines() if line and not line.startswith("-----")]


@pytest.fixture
def oauth(rsa_key: rsa.RSAPrivateKey) -> Iterator[FakeGoogleOAuth]:
    with FakeGoogleOAuth({EMAIL: rsa_key.public_key()}, access_token=ACCESS_TOKEN) as fake:
        yield fake


def service_account_info(key: rsa.RSAPrivateKey, token_uri: str) -> dict[str, Any]:
    return {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem(key),
        "client_email": EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }


@pytest.fixture
def key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, oauth: FakeGoogleOAuth) -> Path:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(service_account_info(rsa_key, oauth.token_uri)))
    return path


@pytest.fixture
def sm() -> Iterator[FakeSecretManager]:
    with FakeSecretManager(
        {"projects/test-project/secrets/openai-key": ["sk-first", "sk-second"]},
        token=ACCESS_TOKEN,
    ) as fake:
        yield fake


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exception_chain_text(exc: BaseException) -> str:
    """str and repr of the exception and of every cause and context linked to it."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(seen.args)]
        for attribute in ("object", "doc", "detail", "message", "what"):
            value = getattr(seen, attribute, None)
            if value is not None:
                parts.append(repr(value))
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# ---------------------------------------------------------------------- paths and CRC32C
def test_crc32c_matches_the_castagnoli_check_value_and_the_fake():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    data = bytes(range(256)) * 3
    assert crc32c(data) == fake_crc32c(data)


def test_paths_are_dispatched_by_scheme():
    assert scheme_of(SM_PATH) == SECRET_MANAGER
    assert scheme_of("projects/p/secrets/s/versions/latest") == SECRET_MANAGER
    assert scheme_of("env:OPENAI_KEY") == ENV
    assert scheme_of("file:/run/secrets/key") == FILE
    for bad in ("projects/p/secrets/s", "projects/p/secrets/s/versions/1/extra", "vault:x", ""):
        with pytest.raises(SecretError) as info:
            scheme_of(bad)
        assert info.value.kind == "invalid_path" and repr(bad) in str(info.value)


# ---------------------------------------------------------------------- env and file
async def test_env_backend_reads_the_variable_and_names_a_missing_one():
    env = EnvSecrets({"OPENAI_KEY": "sk-env"})
    assert await env.get("env:OPENAI_KEY") == "sk-env"
    with pytest.raises(SecretError) as info:
        await env.get("env:MISSING_KEY")
    assert info.value.kind == "not_found" and "MISSING_KEY is not set" in str(info.value)
    with pytest.raises(SecretError) as info:
        await env.get("env:not a name")
    assert info.value.kind == "invalid_path"


async def test_env_backend_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PGMP_TEST_SECRET", "from-os")
    assert await EnvSecrets().get("env:PGMP_TEST_SECRET") == "from-os"


async def test_file_backend_strips_exactly_one_trailing_newline(tmp_path: Path):
    files = FileSecrets()
    cases = {"plain": "key", "lf": "key\n", "crlf": "key\r\n", "two": "key\n\n", "inner": "a\nb"}
    expected = {"plain": "key", "lf": "key", "crlf": "key", "two": "key\n", "inner": "a\nb"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content.encode())
        assert await files.get(f"file:{tmp_path / name}") == expected[name]
    assert await files.get(f"file://{tmp_path / 'lf'}") == "key"  # the URL spelling


async def test_file_backend_errors_name_the_file(tmp_path: Path):
    files = FileSecrets()
    with pytest.raises(SecretError) as info:
        await files.get(f"file:{tmp_path / 'absent'}")
    assert info.value.kind == "not_found" and "absent does not exist" in str(info.value)
    with pytest.raises(SecretError) as info:
        await files.get(f"file:{tmp_path}")
    assert info.value.kind == "unavailable" and str(tmp_path) in str(info.value)
    with pytest.raises(SecretError) as info:
        await files.get("file:relative/key")
    assert info.value.kind == "invalid_path"


# ---------------------------------------------------------------------- the resolver
async def test_resolver_reuses_a_value_for_the_ttl_of_its_clock():
    backend, clock = CountingBackend(), Clock()
    resolver = SecretResolver({ENV: backend}, ttl=300, clock=clock)
    assert await resolver.get("env:A") == "v:1"
    clock.now += 299.9
    assert await resolver.get("env:A") == "v:1"
    assert await resolver.get("env:B") == "v:2"  # one cache entry per path
    clock.now += 0.1
    assert await resolver.get("env:A") == "v:3"
    resolver.invalidate("env:A")
    assert await resolver.get("env:A") == "v:4"
    resolver.invalidate()
    assert await resolver.get("env:B") == "v:5"


async def test_resolver_with_zero_ttl_fetches_every_time():
    backend = CountingBackend()
    resolver = SecretResolver({ENV: backend}, ttl=0)
    assert [await resolver.get("env:A") for _ in range(3)] == ["v:1", "v:2", "v:3"]


async def test_concurrent_gets_of_one_path_share_one_fetch():
    backend = GatedBackend()
    resolver = SecretResolver({ENV: backend}, ttl=0)  # no cache: only coalescing can help
    tasks = [asyncio.create_task(resolver.get("env:A")) for _ in range(5)]
    other = asyncio.create_task(resolver.get("env:B"))
    await backend.started.wait()
    backend.release.set()
    assert await asyncio.gather(*tasks) == ["value of env:A"] * 5
    assert await other == "value of env:B"
    assert backend.calls == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch():
    backend = GatedBackend()
    resolver = SecretResolver({ENV: backend})
    first = asyncio.create_task(resolver.get("env:A"))
    second = asyncio.create_task(resolver.get("env:A"))
    await backend.started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    backend.release.set()
    assert await second == "value of env:A"
    assert backend.calls == 1


async def test_resolver_does_not_cache_failures():
    backend = CountingBackend(errors=[SecretError("boom", kind="unavailable")])
    resolver = SecretResolver({ENV: backend})
    with pytest.raises(SecretError, match="boom"):
        await resolver.get("env:A")
    assert await resolver.get("env:A") == "v:2"


async def test_resolver_refuses_a_scheme_without_a_backend():
    resolver = SecretResolver({ENV: CountingBackend()})
    with pytest.raises(SecretError) as info:
        await resolver.get(SM_PATH)
    assert "secret_manager secret backend" in str(info.value) and SM_PATH in str(info.value)
    with pytest.raises(SecretError, match="unsupported secret path"):
        await resolver.get("vault:kv/key")


# ---------------------------------------------------------------------- Secret Manager
def secret_manager(
    fake: FakeSecretManager, tokens: Any = None, sleeps: Sleeps | None = None, **kwargs: Any
) -> SecretManagerSecrets:
    return SecretManagerSecrets(
        tokens or StaticTokens(ACCESS_TOKEN),
        base_url=fake.base_url,
        sleep=sleeps or Sleeps(),
        **kwargs,
    )


async def test_secret_manager_reads_a_version_over_its_rest_api(sm: FakeSecretManager):
    backend = secret_manager(sm)
    try:
        assert await backend.get(SM_PATH) == "sk-first"
        assert await backend.get("projects/test-project/secrets/openai-key/versions/latest") == (
            "sk-second"
        )
    finally:
        await backend.aclose()
    request = sm.requests[0]
    assert request.method == "GET" and request.path == f"/v1/{SM_PATH}:access"
    assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"


async def test_secret_manager_404_and_403_name_the_path_and_are_not_retried(
    sm: FakeSecretManager,
):
    backend = secret_manager(sm)
    try:
        missing = "projects/test-project/secrets/openai-key/versions/9"
        with pytest.raises(SecretError) as info:
            await backend.get(missing)
        assert info.value.kind == "not_found" and info.value.path == missing
        assert str(info.value).startswith(f"secret {missing} not found")
        sm.fail_next(1, 403, body={"error": {"code": 403, "message": "Permission denied."}})
        with pytest.raises(SecretError) as info:
            await backend.get(SM_PATH)
        assert info.value.kind == "permission_denied"
        assert SM_PATH in str(info.value) and "secretmanager.secretAccessor" in str(info.value)
        assert sm.request_count == 2
    finally:
        await backend.aclose()


async def test_secret_manager_retries_429_and_5xx_with_backoff_and_retry_after(
    sm: FakeSecretManager,
):
    sleeps = Sleeps()
    backend = secret_manager(sm, sleeps=sleeps)
    try:
        sm.fail_next(2, 503)
        assert await backend.get(SM_PATH) == "sk-first"
        assert sm.request_count == 3 and sleeps.delays == [0.25, 0.5]
        sm.fail_next(1, 429, retry_after=2)
        assert await backend.get(SM_PATH) == "sk-first"
        assert sleeps.delays[2:] == [2.0]
        sm.fail_next(1, 429, retry_after=3600)  # longer than max_retry_after: give up now
        with pytest.raises(SecretError, match="HTTP 429"):
            await backend.get(SM_PATH)
        assert sm.request_count == 6
    finally:
        await backend.aclose()


async def test_secret_manager_gives_up_after_its_attempts(sm: FakeSecretManager):
    backend = secret_manager(sm)
    try:
        sm.fail_next(3, 500)
        with pytest.raises(SecretError) as info:
            await backend.get(SM_PATH)
        assert info.value.kind == "unavailable" and SM_PATH in str(info.value)
        assert "HTTP 500: Internal error encountered." in str(info.value)
        assert sm.request_count == 3
    finally:
        await backend.aclose()


async def test_secret_manager_unreachable_is_reported_after_retries():
    sleeps = Sleeps()
    backend = SecretManagerSecrets(
        StaticTokens(ACCESS_TOKEN), base_url=f"http://127.0.0.1:{closed_port()}", sleep=sleeps
    )
    try:
        with pytest.raises(SecretError) as info:
            await backend.get(SM_PATH)
        assert info.value.kind == "unavailable" and "did not answer (ConnectError)" in str(
            info.value
        )
        assert len(sleeps.delays) == 2
    finally:
        await backend.aclose()


async def test_secret_manager_checks_the_crc32c_and_retries_a_corrupted_payload(
    sm: FakeSecretManager,
):
    data = base64.b64encode(b"sk-first").decode()
    corrupted = {"name": SM_PATH, "payload": {"data": data, "dataCrc32c": "12345"}}
    backend = secret_manager(sm)
    try:
        sm.fail_next(1, 200, body=corrupted)
        assert await backend.get(SM_PATH) == "sk-first"
        assert sm.request_count == 2
        sm.fail_next(3, 200, body=corrupted)
        with pytest.raises(SecretError, match="failed its CRC32C check") as info:
            await backend.get(SM_PATH)
        assert info.value.kind == "bad_payload"
        # No checksum sent: accepted as is
        sm.fail_next(1, 200, body={"name": SM_PATH, "payload": {"data": data}})
        assert await backend.get(SM_PATH) == "sk-first"
    finally:
        await backend.aclose()


async def test_secret_manager_rejects_malformed_answers(sm: FakeSecretManager):
    backend = secret_manager(sm, max_attempts=1)
    try:
        sm.bad_body_next(1, "shape")
        with pytest.raises(SecretError, match="has no payload.data"):
            await backend.get(SM_PATH)
        sm.bad_body_next(1, "malformed")
        with pytest.raises(SecretError, match="is not JSON"):
            await backend.get(SM_PATH)
        sm.fail_next(1, 200, body={"payload": {"data": "not base64!"}})
        with pytest.raises(SecretError, match="not base64"):
            await backend.get(SM_PATH)
        with pytest.raises(SecretError, match="invalid Secret Manager path"):
            await backend.get("projects/p/secrets/s")
    finally:
        await backend.aclose()


async def test_secret_manager_retries_a_401_once_with_a_fresh_token(sm: FakeSecretManager):
    tokens = StaticTokens("ya29.expired", ACCESS_TOKEN)
    backend = secret_manager(sm, tokens=tokens)
    try:
        assert await backend.get(SM_PATH) == "sk-first"
        assert tokens.refreshes == 1 and sm.request_count == 2
    finally:
        await backend.aclose()
    always_wrong = StaticTokens("ya29.wrong")
    backend = secret_manager(sm, tokens=always_wrong)
    try:
        with pytest.raises(SecretError) as info:
            await backend.get(SM_PATH)
        assert info.value.kind == "unauthenticated" and SM_PATH in str(info.value)
        assert always_wrong.refreshes == 1 and sm.request_count == 4
    finally:
        await backend.aclose()


async def test_secret_manager_reports_a_token_failure_with_the_path(sm: FakeSecretManager):
    backend = secret_manager(sm, tokens=FailingTokens())
    try:
        with pytest.raises(SecretError) as info:
            await backend.get(SM_PATH)
        assert info.value.kind == "unauthenticated"
        assert str(info.value) == (
            f"cannot read secret {SM_PATH}: Google refused an access token: invalid_grant"
        )
        assert sm.request_count == 0
    finally:
        await backend.aclose()


# ---------------------------------------------------------------------- Google credentials
async def test_service_account_key_gets_a_token_from_the_token_endpoint(
    key_file: Path, oauth: FakeGoogleOAuth
):
    google = GoogleCredentials.from_service_account_file(key_file)
    try:
        assert await google.token() == ACCESS_TOKEN
        assert await google.headers() == {"Authorization": f"Bearer {ACCESS_TOKEN}"}
        assert await google.project_id() == "test-project"
    finally:
        google.close()
    assert oauth.request_count == 1  # cached
    request = oauth.requests[0]
    assert request.method == "POST" and request.path == "/token"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = dict(pair.split("=", 1) for pair in request.body.decode().split("&"))
    assert form["grant_type"] == JWT_BEARER.replace(":", "%3A")
    claims = oauth.issued[0]
    assert claims["iss"] == EMAIL
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"


async def test_token_is_refreshed_shortly_before_it_expires(
    key_file: Path, oauth: FakeGoogleOAuth
):
    oauth.expires_in = 3600
    clock = Clock(time.time())
    google = GoogleCredentials.from_service_account_file(
        key_file, clock=clock, refresh_margin=300
    )
    try:
        assert await google.token() == ACCESS_TOKEN
        clock.now += 3600 - 300 - 5
        assert await google.token() == ACCESS_TOKEN
        assert oauth.request_count == 1
        oauth.access_token = "ya29.second"
        clock.now += 10
        assert await google.token() == "ya29.second"
        assert oauth.request_count == 2
        oauth.access_token = "ya29.third"
        assert await google.token(refresh=True) == "ya29.third"  # forced, e.g. after a 401
        assert oauth.request_count == 3
    finally:
        google.close()


async def test_concurrent_token_requests_share_one_refresh(key_file: Path, oauth: FakeGoogleOAuth):
    google = GoogleCredentials.from_service_account_file(key_file)
    try:
        tokens = await asyncio.gather(*(google.token() for _ in range(10)))
        assert tokens == [ACCESS_TOKEN] * 10
        assert oauth.request_count == 1
    finally:
        google.close()


async def test_token_endpoint_refusal_is_clear_and_never_quotes_the_key(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, oauth: FakeGoogleOAuth
):
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "impostor.json"
    path.write_text(json.dumps(service_account_info(impostor, oauth.token_uri)))
    google = GoogleCredentials.from_service_account_file(path)
    try:
        with pytest.raises(GoogleAuthError) as info:
            await google.token()
    finally:
        google.close()
    message = str(info.value)
    assert message == (
        f"Google refused an access token for the service-account key file {path}: "
        "invalid_grant: Invalid JWT Signature."
    )
    text = exception_chain_text(info.value)
    assert not any(line in text for line in key_body(impostor))


async def test_unreachable_token_endpoint_is_unavailable(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
):
    path = tmp_path / "key.json"
    uri = f"http://127.0.0.1:{closed_port()}/token"
    path.write_text(json.dumps(service_account_info(rsa_key, uri)))
    google = GoogleCredentials.from_service_account_file(path)
    try:
        with pytest.raises(GoogleAuthError) as info:
            await google.token()
    finally:
        google.close()
    assert info.value.kind == "unavailable"
    assert "cannot reach Google's token endpoint" in str(info.value)


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{not json", "is not JSON"),
        ('["a"]', "is not a JSON object"),
        ('{"type": "authorized_user"}', "is not a service-account key"),
        ('{"type": "service_account", "client_email": "x"}', "lacks private_key, token_uri"),
        (None, "has an unusable private key"),
    ],
)
async def test_bad_key_files_are_reported_without_their_content(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, content: str | None, reason: str
):
    path = tmp_path / "key.json"
    if content is None:  # a damaged private key
        info = service_account_info(rsa_key, "http://127.0.0.1:1/token")
        info["private_key"] = info["private_key"].replace("\n", "\n" + LEAK, 2)
        content = json.dumps(info)
    path.write_text(content)
    google = GoogleCredentials.from_service_account_file(path)
    with pytest.raises(GoogleAuthError) as error:
        await google.token()
    assert reason in str(error.value) and str(path) in str(error.value)
    text = exception_chain_text(error.value)
    assert LEAK not in text and not any(line in text for line in key_body(rsa_key))


async def test_missing_key_file_is_reported(tmp_path: Path):
    google = GoogleCredentials.from_key_file(tmp_path / "nope.json")
    with pytest.raises(GoogleAuthError, match="nope.json does not exist"):
        await google.token()


async def test_application_default_credentials_follow_google_application_credentials(
    monkeypatch: pytest.MonkeyPatch, key_file: Path, oauth: FakeGoogleOAuth, tmp_path: Path
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    google = GoogleCredentials.from_key_file(None)
    try:
        assert google.description == "Application Default Credentials"
        assert await google.token() == ACCESS_TOKEN
        assert await google.project_id() == "test-project"
    finally:
        google.close()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "gone.json"))
    google = GoogleCredentials.application_default()
    with pytest.raises(GoogleAuthError) as info:
        await google.token()
    assert str(info.value).startswith("no Google Application Default Credentials:")
    assert "gone.json" in str(info.value)


async def test_secret_manager_authenticates_with_the_proxys_google_credentials(
    key_file: Path, oauth: FakeGoogleOAuth, sm: FakeSecretManager
):
    google = GoogleCredentials.from_service_account_file(key_file)
    resolver = default_resolver(google, secret_manager_base_url=sm.base_url)
    try:
        assert await resolver.get(SM_PATH) == "sk-first"
        assert await resolver.get(SM_PATH) == "sk-first"
    finally:
        await resolver.aclose()
        google.close()
    assert oauth.request_count == 1 and sm.request_count == 1


# ---------------------------------------------------------------------- ModelCredentials
OPENAI = ModelConfig(
    model_id="oa",
    model_request_url="https://api.openai.com/v1/embeddings",
    model_provider="open_ai",
    model_type="text_embedding",
    model_qualified_name="text-embedding-3-small",
    model_auth_type="secret_manager",
    model_auth_id="openai-key",
)
CLAUDE = ModelConfig(
    model_id="claude",
    model_request_url="https://api.anthropic.com/v1/messages",
    model_provider="anthropic",
    model_auth_type="secret_manager",
    model_auth_id="anthropic-key",
)
VERTEX = ModelConfig(
    model_id="vx",
    model_request_url="publishers/google/models/text-embedding-005",
    model_provider="google",
    model_type="text_embedding",
    model_qualified_name="text-embedding-005",
    model_auth_type="alloydb_service_agent_iam",
)


def env_resolver(**environ: str) -> SecretResolver:
    return SecretResolver({ENV: EnvSecrets(environ)})


async def test_secret_path_carried_by_the_model_row_becomes_the_providers_header():
    credentials = ModelCredentials(env_resolver(OA="sk-openai\n", AN="sk-ant"))
    row = {  # SELECT m.*, s.secret_path FROM google_ml.models m LEFT JOIN google_ml.sm_secrets s
        **_fields(OPENAI),
        "secret_path": "env:OA",
        "unrelated": 1,
    }
    openai = SecretModelConfig.from_row(row)
    assert isinstance(openai, SecretModelConfig) and openai.secret_path == "env:OA"
    assert await credentials.headers_for(openai) == {"Authorization": "Bearer sk-openai"}
    claude = SecretModelConfig(**{**_fields(CLAUDE), "secret_path": "env:AN"})
    assert await credentials.headers_for(claude) == {"x-api-key": "sk-ant"}


def _fields(model: ModelConfig) -> dict[str, Any]:
    return asdict(model)


async def test_secret_path_from_the_sessions_lookup():
    asked: list[str] = []

    async def secret_path_for(secret_id: str) -> str | None:
        asked.append(secret_id)
        return {"openai-key": "env:OA"}.get(secret_id)

    credentials = ModelCredentials(env_resolver(OA="sk-openai"), secret_path_for=secret_path_for)
    assert await credentials.headers_for(OPENAI) == {"Authorization": "Bearer sk-openai"}
    with pytest.raises(ModelConfigError) as info:
        await credentials.headers_for(CLAUDE)
    assert str(info.value) == (
        "model \"claude\": secret 'anthropic-key' named by model_auth_id is not registered "
        "(see google_ml.create_sm_secret)"
    )
    assert asked == ["openai-key", "anthropic-key"]


async def test_auth_types_null_iam_and_unknown(key_file: Path, oauth: FakeGoogleOAuth):
    google = GoogleCredentials.from_service_account_file(key_file)
    credentials = ModelCredentials(env_resolver(), google)
    try:
        assert await credentials.headers_for(ModelConfig(model_id="m", model_request_url="u")) == {}
        assert await credentials.headers_for(VERTEX) == {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    finally:
        google.close()
    with pytest.raises(ModelConfigError, match="needs Google credentials configured"):
        await ModelCredentials(env_resolver()).headers_for(VERTEX)
    odd = ModelConfig(model_id="m", model_request_url="u", model_auth_type="password")
    with pytest.raises(ModelConfigError, match="unsupported model_auth_type 'password'"):
        await credentials.headers_for(odd)
    no_id = ModelConfig(model_id="m", model_request_url="u", model_auth_type="secret_manager")
    with pytest.raises(ModelConfigError, match="model_auth_id"):
        await credentials.headers_for(no_id)


async def test_secret_failures_become_model_call_errors_naming_model_and_secret():
    credentials = ModelCredentials(env_resolver(), secret_path_for=_const("env:ABSENT"))
    with pytest.raises(CredentialError) as info:
        await credentials.headers_for(OPENAI)
    assert isinstance(info.value, ModelCallError) and info.value.kind == "not_found"
    assert str(info.value) == (
        "model \"oa\": cannot use secret 'openai-key': secret env:ABSENT: environment variable "
        "ABSENT is not set on the proxy"
    )


def _const(path: str) -> Any:
    async def lookup(secret_id: str) -> str | None:
        return path

    return lookup


async def test_engine_calls_openai_with_a_key_from_secret_manager(
    key_file: Path, oauth: FakeGoogleOAuth
):
    with (
        FakeSecretManager({"openai-key": "sk-from-secret-manager"}, token=ACCESS_TOKEN) as sm,
        FakeOpenAI(api_key="sk-from-secret-manager") as openai,
    ):
        google = GoogleCredentials.from_service_account_file(key_file)
        resolver = default_resolver(google, secret_manager_base_url=sm.base_url)
        credentials = ModelCredentials(resolver, google, secret_path_for=_const(SM_PATH))
        settings = EngineSettings(openai_base_url=openai.base_url, max_attempts=1)
        try:
            async with Engine(settings, credentials) as engine:
                vectors = await engine.embed(OPENAI, ["a", "b", "a"])
        finally:
            await resolver.aclose()
            google.close()
        assert len(vectors) == 3 and vectors[0] == vectors[2]
        assert openai.last_request is not None
        assert openai.last_request.headers["authorization"] == "Bearer sk-from-secret-manager"


async def test_engine_calls_vertex_with_the_proxys_google_token(
    key_file: Path, oauth: FakeGoogleOAuth
):
    with FakeVertex(token=ACCESS_TOKEN) as vertex:
        google = GoogleCredentials.from_service_account_file(key_file)
        credentials = ModelCredentials(env_resolver(), google)
        settings = EngineSettings(
            vertex_base_url=vertex.base_url, google_project="test-project", max_attempts=1
        )
        try:
            async with Engine(settings, credentials) as engine:
                vectors = await engine.embed(VERTEX, ["hello"])
        finally:
            google.close()
        assert len(vectors) == 1 and oauth.request_count == 1


# ---------------------------------------------------------------------- no value ever leaks
async def _leak_scenarios(tmp_path: Path, sm: FakeSecretManager) -> list[tuple[str, Any]]:
    """(name, coroutine factory) pairs that fail while the LEAK value is within reach."""
    data = base64.b64encode(LEAK.encode()).decode()
    bad_file = tmp_path / "binary"
    bad_file.write_bytes(LEAK.encode() + b"\xff\xfe")
    sm.secrets["leaky"] = [LEAK, LEAK.encode() + b"\xff", LEAK + "\x01", "  "]
    leaky = "projects/test-project/secrets/leaky/versions/"
    backend = secret_manager(sm, max_attempts=2)
    resolver = SecretResolver(
        {SECRET_MANAGER: backend, ENV: EnvSecrets({"OTHER": LEAK}), FILE: FileSecrets()}
    )

    def model_with(path: str) -> SecretModelConfig:
        return SecretModelConfig(**{**_fields(OPENAI), "secret_path": path})

    credentials = ModelCredentials(resolver)

    async def crc_mismatch() -> Any:
        sm.fail_next(2, 200, body={"payload": {"data": data, "dataCrc32c": "7"}})
        return await credentials.headers_for(model_with(leaky + "1"))

    async def echoed_by_server() -> Any:  # a 5xx whose body is not Google's error JSON
        sm.fail_next(2, 500, body=b"upstream failure")
        return await credentials.headers_for(model_with(leaky + "1"))

    async def forbidden() -> Any:
        sm.fail_next(1, 403)
        return await credentials.headers_for(model_with(leaky + "1"))

    return [
        ("file not UTF-8", lambda: credentials.headers_for(model_with(f"file:{bad_file}"))),
        ("payload not UTF-8", lambda: credentials.headers_for(model_with(leaky + "2"))),
        ("control character", lambda: credentials.headers_for(model_with(leaky + "3"))),
        ("blank secret", lambda: credentials.headers_for(model_with(leaky + "4"))),
        ("missing version", lambda: credentials.headers_for(model_with(leaky + "9"))),
        ("missing env", lambda: credentials.headers_for(model_with("env:NOT_OTHER"))),
        ("crc mismatch", crc_mismatch),
        ("server error", echoed_by_server),
        ("forbidden", forbidden),
        ("bad path", lambda: credentials.headers_for(model_with("projects/x"))),
    ]


async def test_no_failure_path_puts_a_secret_value_in_messages_or_logs(
    tmp_path: Path, sm: FakeSecretManager, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    scenarios = await _leak_scenarios(tmp_path, sm)
    failures: dict[str, ModelCallError] = {}
    for name, run in scenarios:
        with pytest.raises(ModelCallError) as info:
            await run()
        failures[name] = info.value
        text = exception_chain_text(info.value)
        assert LEAK not in text, f"{name}: {text}"
    assert LEAK not in caplog.text
    assert set(failures) == {name for name, _ in scenarios}
    assert "is not UTF-8 text" in str(failures["payload not UTF-8"])
    assert "control or non-ASCII" in str(failures["control character"])
    assert "is empty" in str(failures["blank secret"])
    assert "failed its CRC32C check" in str(failures["crc mismatch"])
    # The value itself resolves fine: the hunt above was for the right string
    assert await SecretResolver({ENV: EnvSecrets({"OTHER": LEAK})}).get("env:OTHER") == LEAK


async def test_google_auth_failure_logs_and_messages_carry_no_key_or_token(
    tmp_path: Path, oauth: FakeGoogleOAuth, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "impostor.json"
    path.write_text(json.dumps(service_account_info(impostor, oauth.token_uri)))
    google = GoogleCredentials.from_service_account_file(path)
    try:
        with pytest.raises(CredentialError) as info:
            await ModelCredentials(env_resolver(), google).headers_for(VERTEX)
    finally:
        google.close()
    assert "invalid_grant: Invalid JWT Signature." in str(info.value)
    text = exception_chain_text(info.value) + caplog.text
    assert not any(line in text for line in key_body(impostor))
    assert ACCESS_TOKEN not in text

