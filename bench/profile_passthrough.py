"""Where the proxy's time goes on the pass-through path: py-spy over a pgbench run.

Starts a fresh embedded PostgreSQL and the proxy, runs `pgbench -S -M MODE -c N` through
the proxy while `py-spy record` samples it, and prints the share of samples per function
(self time) and per proxy source line. Needs py-spy (`pip install -e '.[bench]'`).

    python bench/profile_passthrough.py [--mode prepared] [--clients 4] [--duration 8]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import ProxyProcess, make_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="prepared", choices=["simple", "extended", "prepared"])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 1

    root = Path(tempfile.mkdtemp(prefix="pgmp-prof-"))
    server = make_server(root / "pg", tls=False)
    server.start()
    proxy = None
    try:
        pgbench = str(server.bin_dir / "pgbench")  # type: ignore[operator]
        common = ["-h", "127.0.0.1", "-U", "postgres"]
        subprocess.run([pgbench, "-i", "-s", "10", "-q", *common, "-p", str(server.port), "postgres"],
                       capture_output=True, check=True, timeout=600)
        upstream = f"postgresql:///?host={server.socket_dir}&port={server.port}"
        proxy = ProxyProcess(["--upstream", upstream]).start()
        assert proxy.proc is not None
        raw = root / "profile.raw"
        spy = subprocess.Popen(
            ["py-spy", "record", "-p", str(proxy.proc.pid), "-d", str(args.duration), "-r", "500",
             "-f", "raw", "-o", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        jobs = str(min(args.clients, 2))
        out = subprocess.run(
            [pgbench, "-S", "-M", args.mode, "-c", str(args.clients), "-j", jobs, "-n",
             "-T", str(args.duration), *common, "-p", str(proxy.port), "postgres"],
            capture_output=True, text=True, timeout=args.duration + 120,
        )
        spy.wait(args.duration + 60)
        tps = [line for line in out.stdout.splitlines() if line.startswith("tps")]
        print(f"pgbench -S -M {args.mode} -c {args.clients} through the proxy: {tps}")
        report(raw)
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(raw: Path) -> None:
    by_function: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        by_function[stack.split(";")[-1]] += n
    print(f"{total} samples; self time by frame (function, file:line):")
    for frame, n in by_function.most_common(12):
        print(f"  {n / total:6.1%}  {frame}")


if __name__ == "__main__":
    sys.exit(main())
