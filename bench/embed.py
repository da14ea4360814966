"""Batch embedding throughput: UPDATE ... SET emb = google_ml.embedding('m', body) through the proxy.

One run, everything local:

* a fresh embedded PostgreSQL 18 + pgvector, the extension, and a table of N rows;
* a fake OpenAI server (tests/fakes/openai.py: the real request/response format, the real
  2048-inputs-per-request limit) answering after a fixed latency (default 50 ms);
* the proxy fronting the server, calling the fake.

It prints:

1. the UPDATE of N rows through the proxy: rows/s, HTTP requests the fake received;
2. the serial baseline, one HTTP call per row, one after the other (what a database that calls
   the model per row does), measured over a sample of rows in the same run, and the ratio;
3. the added latency of one `SELECT embedding('m', 'q')` through the proxy over the same
   request sent straight to the fake (median of several distinct queries each);
4. the same UPDATE writing precomputed vectors (no model), directly and through the proxy,
   so the proxy's own overhead shows.

    python bench/embed.py [--rows 10000] [--latency 0.05] [--serial-sample 100] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakes.openai import FakeOpenAI  # noqa: E402
from tests.support import ProxyProcess, make_server  # noqa: E402

KEY = "sk-bench"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.05, help="fake provider latency, seconds")
    parser.add_argument("--serial-sample", type=int, default=100, help="rows the serial baseline times")
    parser.add_argument("--single", type=int, default=15, help="single-call latency samples")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="pgmp-embed-"))
    server = make_server(root / "pg", tls=False)
    fake = FakeOpenAI(KEY, latency=args.latency)
    proxy = None
    try:
        server.start()
        proxy = ProxyProcess(
            ["--upstream", f"postgresql:///?host={server.socket_dir}&port={server.port}",
             "--openai-base-url", fake.base_url],
            env={"PGMP_BENCH_OPENAI_KEY": KEY, "PGMP_LOG_LEVEL": os.environ.get("PGMP_LOG_LEVEL", "info")},
        ).start()
        direct_dsn = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        with psycopg.connect(direct_dsn, autocommit=True) as conn:
            setup(conn, args.rows)
        lines = run(args, fake, proxy, direct_dsn)
    finally:
        if proxy is not None:
            proxy.stop()
        fake.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text(
            "```\n" + " ".join(["python", *sys.argv]) + "\n```\n\n"
            f"- machine: {os.cpu_count()} CPUs, Python {platform.python_version()}\n\n"
            + "\n".join(lines) + "\n"
        )
    return 0


def setup(conn: psycopg.Connection, rows: int) -> None:
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute("CREATE EXTENSION IF NOT EXISTS google_ml_integration")
    conn.execute("CALL google_ml.create_sm_secret('bench-key', 'env:PGMP_BENCH_OPENAI_KEY')")
    conn.execute(
        "CALL google_ml.create_model(model_id => 'm', model_provider => 'open_ai', "
        "model_qualified_name => 'text-embedding-3-small', model_auth_id => 'bench-key')"
    )
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, emb vector(1536), pre vector(1536))")
    conn.execute(
        "INSERT INTO docs (id, body) SELECT i, 'document number ' || i || ' about AlloyDB and PostgreSQL' "
        "FROM generate_series(1, %s) i",
        (rows,),
    )


def run(args: argparse.Namespace, fake: FakeOpenAI, proxy: ProxyProcess, direct_dsn: str) -> list[str]:
    lines = [f"rows: {args.rows}, fake provider latency: {args.latency * 1000:.0f} ms, "
             "OpenAI limit 2048 inputs/request"]
    # The fake computes a vector per text in Python, on this machine's 2 cores, which a real
    # provider does on its own: compute them before timing (the fake caches them), so the
    # measurement is the proxy plus the provider's configured latency.
    t = time.perf_counter()
    for i in range(1, args.rows + 1):
        FakeOpenAI.expected_embedding(f"document number {i} about AlloyDB and PostgreSQL")
    lines.append(f"(fake provider vectors precomputed before timing: {time.perf_counter() - t:.1f} s)")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        fake.reset()
        started = time.perf_counter()
        updated = conn.execute("UPDATE docs SET emb = google_ml.embedding('m', body)::vector").rowcount
        elapsed = time.perf_counter() - started
        requests = fake.request_count
        assert updated == args.rows
        assert conn.execute("SELECT count(*) FROM docs WHERE emb IS NULL").fetchone() == (0,)
        batched_rate = updated / elapsed
        lines.append(
            f"1. UPDATE through the proxy: {elapsed:.2f} s, {batched_rate:,.0f} rows/s, "
            f"{requests} HTTP requests to the provider"
        )

        serial_rate = serial_baseline(fake, args.serial_sample)
        lines.append(
            f"2. serial baseline (one call per row, sequential; {args.serial_sample} rows timed): "
            f"{serial_rate:,.1f} rows/s -> batched/serial = {batched_rate / serial_rate:,.0f}x"
        )

        # The fake's own time for the very request the proxy sends (its sleep, its HTTP server,
        # base64 of 1536 floats) is measured straight to it, in this run, and subtracted.
        for i in range(args.single):
            FakeOpenAI.expected_embedding(f"single query {i}")
            FakeOpenAI.expected_embedding(f"direct query {i}")
        direct = direct_single_calls(fake, args.single)
        samples = []
        for i in range(args.single):
            t = time.perf_counter()
            conn.execute(f"SELECT google_ml.embedding('m', 'single query {i}')").fetchone()
            samples.append(time.perf_counter() - t)
        median, direct_median = statistics.median(samples), statistics.median(direct)
        lines.append(
            f"3. one SELECT embedding('m', 'q'): median {median * 1000:.1f} ms through the proxy; "
            f"the same request straight to the fake: {direct_median * 1000:.1f} ms "
            f"(its latency {args.latency * 1000:.0f} ms + its own HTTP work) -> "
            f"{(median - direct_median) * 1000:.1f} ms added by the proxy "
            f"(min {min(samples) * 1000:.1f} ms, {args.single} samples each)"
        )

        conn.execute("UPDATE docs SET pre = emb")  # precomputed vectors to write again
        t = time.perf_counter()
        conn.execute("UPDATE docs SET emb = pre")
        via_proxy = time.perf_counter() - t
    with psycopg.connect(direct_dsn, autocommit=True) as direct:
        t = time.perf_counter()
        direct.execute("UPDATE docs SET emb = pre")
        via_direct = time.perf_counter() - t
    lines.append(
        f"4. UPDATE writing precomputed vectors (no model): direct {via_direct:.2f} s, "
        f"through the proxy {via_proxy:.2f} s (x{via_proxy / via_direct:.2f})"
    )
    return lines


def direct_single_calls(fake: FakeOpenAI, samples: int) -> list[float]:
    """Seconds per request of the one the proxy makes for a single call, sent straight to the fake."""
    times = []
    with httpx.Client(base_url=fake.base_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        for i in range(samples):
            t = time.perf_counter()
            response = client.post(
                "/v1/embeddings",
                json={"model": "text-embedding-3-small", "input": [f"direct query {i}"], "encoding_format": "base64"},
            )
            response.raise_for_status()
            times.append(time.perf_counter() - t)
    return times


def serial_baseline(fake: FakeOpenAI, sample: int) -> float:
    """Rows/s of one embeddings request per row, each waiting for the previous one."""
    with httpx.Client(base_url=fake.base_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        started = time.perf_counter()
        for i in range(sample):
            response = client.post(
                "/v1/embeddings", json={"model": "text-embedding-3-small", "input": [f"serial row {i}"]}
            )
            response.raise_for_status()
        return sample / (time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
