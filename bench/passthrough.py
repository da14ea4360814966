"""Pass-through overhead: pgbench -S straight to PostgreSQL, through the proxy, through PgBouncer.

One run starts everything it needs in a temporary directory and removes it afterwards:

* a fresh embedded PostgreSQL 18 (proxy.embedded.EmbeddedPostgres) on a Unix socket and
  127.0.0.1:<free port>, with `host all all 127.0.0.1/32 trust`, initialised with
  `pgbench -i -s 10`;
* the proxy (`python -m proxy`) on 127.0.0.1:<free port>, fronting the server's Unix socket;
* PgBouncer (/usr/sbin/pgbouncer, `apt-get install pgbouncer`) in session pool mode on
  127.0.0.1:<free port>, auth_type=trust, also fronting the Unix socket (skipped, with a
  note, when not installed).

For each query mode (simple, prepared) and client count it runs
`pgbench -S -M MODE -c N -j min(N,2) -T DURATION -n -l` over TCP against each target, takes
the TPS pgbench reports (without initial connection time) and p50/p99 from the
per-transaction log, and prints a markdown table.

Usage:
    python bench/passthrough.py [--duration S] [--clients 1,4,16] [--modes simple,prepared]
                                [--scale 10] [--markdown FILE]

Every subprocess runs under a timeout; the proxy, PgBouncer and the server are stopped and
the temporary directory removed even when a step fails or the run is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from proxy.embedded import SERVICE_USER, EmbeddedPostgres  # noqa: E402
from tests.support import ProxyProcess, free_port  # noqa: E402

PGBOUNCER = Path("/usr/sbin/pgbouncer")
TARGETS = ("direct", "proxy", "pgbouncer")
TPS_LINE = re.compile(r"tps = ([\d.]+) \(without initial connection time\)")
FAILED_LINE = re.compile(r"number of failed transactions: (\d+)")
# pgbench's own environment: plain TCP (the wheel's libpq has no TLS anyway), bounded connects.
PG_ENV = {"PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10", "PGUSER": "postgres"}


# --- arguments and small helpers ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (-T)")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--modes", default="simple,prepared", help="pgbench -M query modes")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    parser.add_argument("--markdown", type=Path, help="also write the table and machine info here")
    args = parser.parse_args(argv)
    args.clients = [int(n) for n in args.clients.split(",") if n.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.clients or min(args.clients) < 1:
        parser.error("--clients needs positive integers")
    if bad := set(args.modes) - {"simple", "extended", "prepared"}:
        parser.error(f"unknown --modes {sorted(bad)}")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    return args


def run(cmd: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within `timeout`; fail with its output if it fails."""
    env = {**os.environ, **PG_ENV}
    try:
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs  # type: ignore[arg-type]
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"timed out after {timeout:.0f}s: {shlex.join(cmd)}") from exc
    if result.returncode != 0:
        raise RuntimeError(
            f"exit {result.returncode}: {shlex.join(cmd)}\n{result.stdout[-2000:]}"
            f"{result.stderr[-2000:]}"
        )
    return result


def is_root() -> bool:
    return os.geteuid() == 0


def give_to_service_user(path: Path) -> None:
    """Under root, hand `path` to the user the server (and PgBouncer) run as."""
    if is_root():
        import pwd

        entry = pwd.getpwnam(SERVICE_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def stop_process(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def make_server(root: Path, max_clients: int) -> EmbeddedPostgres:
    """An unstarted embedded server: TCP on 127.0.0.1 (trust) plus its Unix socket."""
    server = EmbeddedPostgres(
        root / "data",
        port=free_port(),
        listen_addresses="127.0.0.1",
        # direct + proxy + PgBouncer's idle pool may all hold connections at once.
        settings={"max_connections": str(3 * max_clients + 20)},
        hba=["host all all 127.0.0.1/32 trust"],
    )
    return server


def pgbench_binary(server: EmbeddedPostgres) -> Path:
    assert server.bin_dir is not None
    bundled = server.bin_dir / "pgbench"
    return bundled if bundled.exists() else Path("/usr/bin/pgbench")


@dataclass
class PgBouncer:
    """PgBouncer in session mode, trust auth, fronting the server's Unix socket."""

    workdir: Path
    socket_dir: Path
    server_port: int
    pool_size: int
    port: int = 0
    logs: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "userlist.txt").write_text('"postgres" ""\n')
        ini = self.workdir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.socket_dir} port={self.server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.workdir / 'userlist.txt'}\n"
            "pool_mode = session\n"
            f"max_client_conn = {self.pool_size + 50}\ndefault_pool_size = {self.pool_size}\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.workdir / 'pgbouncer.log'}\n"
        )
        for path in (self.workdir, ini, self.workdir / "userlist.txt"):
            give_to_service_user(path)
        return ini

    def start(self, timeout: float = 30) -> PgBouncer:
        self.port = free_port()
        ini = self.write_config()
        # PgBouncer refuses to run as root, and only the service user may enter the server's
        # 0700 socket directory: run it as that user.
        self.proc = subprocess.Popen(
            [str(PGBOUNCER), str(ini)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, cwd=self.workdir,
            user=SERVICE_USER if is_root() else None,
        )
        threading.Thread(
            target=pump_output, args=(self.proc, self.logs, threading.Event()), daemon=True
        ).start()
        if not wait_for_port(self.port, timeout, self.proc):
            self.stop()
            log = self.workdir / "pgbouncer.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"pgbouncer did not start:\n{''.join(self.logs)}{tail}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def pump_output(proc: subprocess.Popen[str], lines: list[str], done: threading.Event) -> None:
    """Keep a child's pipe drained (so it never blocks on a full pipe), its last lines kept."""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        del lines[:-200]
    done.set()


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[str]) -> bool:
    """Poll until something accepts TCP on 127.0.0.1:port (a readiness probe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        time.sleep(0.05)
    return False


def check_target(psql: Path, name: str, port: int) -> None:
    """One real query end to end, so a broken target fails before the benchmark."""
    out = run([str(psql), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(port), "-d", "postgres",
               "-c", "SELECT count(*) FROM pgbench_branches"], timeout=20).stdout
    if not out.strip().isdigit():
        raise RuntimeError(f"{name}: unexpected answer {out!r}")


# --- pgbench runs ---


@dataclass
class Result:
    tps: float
    p50_ms: float
    p99_ms: float
    transactions: int


def percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def read_latencies_us(prefix: Path) -> list[int]:
    """Per-transaction latencies (µs, 3rd column) from pgbench's -l files PREFIX.PID[.THREAD]."""
    latencies: list[int] = []
    files = sorted(prefix.parent.glob(prefix.name + ".*"))
    for log_file in files:
        for line in log_file.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():  # skips "failed"/"skipped"
                latencies.append(int(fields[2]))
        log_file.unlink()
    return sorted(latencies)


def run_pgbench(pgbench: Path, port: int, mode: str, clients: int, duration: int,
                log_prefix: Path) -> Result:
    cmd = [
        str(pgbench), "-h", "127.0.0.1", "-p", str(port), "-S", "-M", mode, "-c", str(clients),
        "-j", str(min(clients, 2)), "-T", str(duration), "-n",
        "-l", f"--log-prefix={log_prefix}", "postgres",
    ]
    out = run(cmd, timeout=duration + 60).stdout
    tps = TPS_LINE.search(out)
    if tps is None:
        raise RuntimeError(f"no tps line from {shlex.join(cmd)}:\n{out}")
    failed = FAILED_LINE.search(out)
    if failed and int(failed.group(1)):
        raise RuntimeError(f"{failed.group(1)} failed transactions: {shlex.join(cmd)}\n{out}")
    latencies = read_latencies_us(log_prefix)
    if not latencies:
        raise RuntimeError(f"no transactions logged by {shlex.join(cmd)}")
    return Result(
        tps=float(tps.group(1)),
        p50_ms=percentile(latencies, 0.50) / 1000,
        p99_ms=percentile(latencies, 0.99) / 1000,
        transactions=len(latencies),
    )


# --- report ---


def ratio(a: Result | None, b: Result | None) -> str:
    return f"{a.tps / b.tps:.2f}" if a and b and b.tps else "n/a"


def fmt_ms(r: Result | None, attr: str) -> str:
    return f"{getattr(r, attr):.3f}" if r else "n/a"


def fmt_tps(r: Result | None) -> str:
    return f"{r.tps:,.0f}" if r else "n/a"


def added_us(proxy: Result | None, direct: Result | None, attr: str) -> str:
    if not proxy or not direct:
        return "n/a"
    return f"{(getattr(proxy, attr) - getattr(direct, attr)) * 1000:+.0f}"


def markdown_table(results: dict[tuple[str, int, str], Result | None],
                   modes: list[str], clients: list[int]) -> str:
    header = [
        "mode", "clients", "TPS direct", "TPS proxy", "TPS pgbouncer", "proxy/direct",
        "proxy/pgbouncer", "p50 direct ms", "p99 direct ms", "p50 proxy ms", "p99 proxy ms",
        "p50 pgbouncer ms", "p99 pgbouncer ms", "proxy +p50 µs", "proxy +p99 µs",
    ]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode in modes:
        for n in clients:
            d, p, b = (results.get((mode, n, t)) for t in TARGETS)
            cells = [
                mode, str(n), fmt_tps(d), fmt_tps(p), fmt_tps(b), ratio(p, d), ratio(p, b),
                fmt_ms(d, "p50_ms"), fmt_ms(d, "p99_ms"), fmt_ms(p, "p50_ms"),
                fmt_ms(p, "p99_ms"), fmt_ms(b, "p50_ms"), fmt_ms(b, "p99_ms"),
                added_us(p, d, "p50_ms"), added_us(p, d, "p99_ms"),
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def first_line(cmd: list[str]) -> str:
    try:
        return run(cmd, timeout=10).stdout.splitlines()[0].strip()
    except (RuntimeError, OSError, IndexError):
        return "unknown"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(server: EmbeddedPostgres, pgbench: Path, have_pgbouncer: bool) -> list[str]:
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    with contextlib.suppress(RuntimeError, OSError):
        if run(["git", "-C", str(REPO), "status", "--porcelain", "--", "proxy"], timeout=10).stdout:
            commit += " (proxy/ has uncommitted changes)"
    return [
        f"- nproc: {len(os.sched_getaffinity(0))} (CPU: {cpu_model()})",
        f"- kernel: {platform.platform()}",
        f"- load average at the end (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- python: {platform.python_version()} ({sys.executable})",
        f"- PostgreSQL: {server.version()} ({server.bin_dir})",
        f"- pgbench: {first_line([str(pgbench), '--version'])}",
        f"- pgbouncer: {first_line([str(PGBOUNCER), '--version']) if have_pgbouncer else 'absent'}",
        f"- proxy commit: {commit}",
    ]


def write_markdown(path: Path, table: str, info: list[str], notes: list[str]) -> None:
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    text = [
        "# Pass-through benchmark", "", "Command:", "", "```", command, "```", "",
        "Machine:", "", *info, "", table, "",
    ]
    if notes:
        text += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    path.write_text("\n".join(text))


# --- main ---


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the cleanup below still runs."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    root = Path(tempfile.mkdtemp(prefix="pgmp-bench-"))
    stack.callback(shutil.rmtree, root, ignore_errors=True)
    notes: list[str] = []

    if (load := os.getloadavg()[0]) > 0.5:
        note(f"WARNING: 1-minute load average is {load:.2f}: other work will skew the numbers")
    server = make_server(root, max(args.clients))
    stack.callback(server.stop)
    note(f"starting PostgreSQL in {server.data_dir} (port {server.port})")
    server.start()
    pgbench = pgbench_binary(server)
    psql = server.bin_dir / "psql"  # type: ignore[operator]
    note(f"pgbench -i -s {args.scale}")
    run([str(pgbench), "-i", "-s", str(args.scale), "-q", "-h", "127.0.0.1", "-p",
         str(server.port), "postgres"], timeout=900)

    ports = {"direct": server.port}
    upstream = f"postgresql:///?host={quote(str(server.socket_dir))}&port={server.port}"
    proxy = ProxyProcess(["--upstream", upstream])
    stack.callback(proxy.stop)
    ports["proxy"] = proxy.start().port
    note(f"proxy on 127.0.0.1:{proxy.port} -> {upstream}")

    if PGBOUNCER.exists():
        bouncer = PgBouncer(root / "pgbouncer", server.socket_dir, server.port, max(args.clients))
        stack.callback(bouncer.stop)
        ports["pgbouncer"] = bouncer.start().port
        note(f"pgbouncer on 127.0.0.1:{bouncer.port} (session mode)")
    else:
        notes.append(f"{PGBOUNCER} not found (apt-get install pgbouncer): pgbouncer column skipped")
        note("NOTE: " + notes[-1])

    for name, port in ports.items():
        check_target(psql, name, port)

    logs = root / "pgbench-logs"
    logs.mkdir()
    results: dict[tuple[str, int, str], Result | None] = {}
    for mode in args.modes:
        for n in args.clients:
            for name, port in ports.items():
                note(f"{mode:8} c={n:<3} {name:10} ...")
                result = run_pgbench(pgbench, port, mode, n, args.duration,
                                     logs / f"{name}-{mode}-{n}")
                results[(mode, n, name)] = result
                note(f"{'':23}{result.tps:10,.0f} tps  p50 {result.p50_ms:.3f} ms  "
                     f"p99 {result.p99_ms:.3f} ms  ({result.transactions} xacts)")

    table = markdown_table(results, args.modes, args.clients)
    print(table)
    for text in notes:
        print(f"\nNote: {text}")
    if args.markdown:
        write_markdown(args.markdown, table, machine_info(server, pgbench, PGBOUNCER.exists()),
                       notes)
        note(f"wrote {args.markdown}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with sigterm_as_exit(), contextlib.ExitStack() as stack:
        try:
            bench(args, stack)
        except RuntimeError as exc:
            note(f"error: {exc}")
            return 1
        except (KeyboardInterrupt, SystemExit):
            note("interrupted: stopping the proxy, PgBouncer and PostgreSQL")
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
