"""Cluster DNS throughput and latency: gitorch's DNS server against dnsmasq, with dnsperf.

Issue targets: gitorch/dnsmasq queries-per-second ratio >= 1.0, in-zone NXDOMAIN as cheap
as a hit, and (issue 18) p99 at 20k queries/s offered at or under 0.5 ms with the hostile-
client checks in place (allowed clients, RRL, byte-bounded cache: on the miss path only).
Both servers get the same 1,000 service names (`svc-N.ns-M.svc.cluster.local`, A) and
the same query file: those names plus 10% names missing from the zone (NXDOMAIN).
gitorch's server runs in a subprocess of this script (`--serve`), as dnsmasq does. Each
server gets a throughput run of `--seconds` (qps, average and max latency from dnsperf's
summary), then shorter verbose runs whose per-query latencies give p50/p99: one at full
load, then one per `--latency-qps` offered rate. With `--rounds N` both are measured N
times, alternating who goes first; the ratio is the median of the per-round ratios, and
p99s are also given as medians. Last line: the ratio.

Needs the Debian packages dnsperf and dnsmasq (installed with apt-get when missing).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HOST = "127.0.0.1"
DOMAIN = "cluster.local"


def names(count: int) -> list[tuple[str, str]]:
    """(name, ip) for `count` ClusterIP services spread over 10 namespaces."""
    out = []
    for i in range(count):
        ip = f"10.96.{i // 250}.{i % 250 + 1}"
        out.append((f"svc-{i}.ns-{i % 10}.svc.{DOMAIN}", ip))
    return out


def serve(port: int, count: int, workers: int) -> None:
    """Run gitorch's DNS server for the bench until stdin closes."""
    from gitorch.dns.server import DNSServer, DNSSettings
    from gitorch.dns.zone import PortRecord, ServiceRecord, ZoneData

    services = tuple(
        ServiceRecord(
            name.split(".")[0], name.split(".")[1], ip, (PortRecord("http", 80),)
        )
        for name, ip in names(count)
    )
    zone = ZoneData(services=services, namespaces=frozenset(f"ns-{i}" for i in range(10)))
    settings = DNSSettings(host=HOST, port=port, udp_workers=workers)
    with DNSServer(zone, settings) as server:
        print(f"ready {server.port}", flush=True)
        sys.stdin.read()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


def ensure_tools() -> None:
    missing = [pkg for pkg, exe in (("dnsperf", "dnsperf"), ("dnsmasq", "dnsmasq"))
               if not shutil.which(exe) and not Path(f"/usr/sbin/{exe}").exists()]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True,
                       stdout=subprocess.DEVNULL)


def dig(port: int, name: str) -> tuple[str, list[str]]:
    out = subprocess.run(
        ["dig", f"@{HOST}", "-p", str(port), "+time=2", "+tries=3", "+noall", "+answer",
         "+comments", name, "A"],
        capture_output=True, text=True, check=False,
    ).stdout
    status = re.search(r"status: (\w+)", out)
    answers = [line.split()[-1] for line in out.splitlines()
               if line and not line.startswith(";") and "\tA\t" in line]
    return (status.group(1) if status else "no answer"), answers


def check(port: int, label: str, table: list[tuple[str, str]], missing: str) -> None:
    """The server must really answer: a known name, and NXDOMAIN for a missing one."""
    for _ in range(50):
        status, answers = dig(port, table[7][0])
        if status != "no answer":
            break
        time.sleep(0.1)
    if status != "NOERROR" or answers != [table[7][1]]:
        sys.exit(f"{label}: {table[7][0]} answered {status} {answers}, want {table[7][1]}")
    status, _ = dig(port, missing)
    if status != "NXDOMAIN":
        sys.exit(f"{label}: {missing} answered {status}, want NXDOMAIN")


@dataclass
class Result:
    qps: float
    avg_ms: float
    max_ms: float
    lost: str
    p50_ms: float
    p99_ms: float
    at_rate: dict[int, tuple[float, float]]
    """offered qps -> (p50, p99) in ms"""


def dnsperf(port: int, queries: Path, seconds: float, extra: list[str]) -> str:
    cmd = ["dnsperf", "-s", HOST, "-p", str(port), "-d", str(queries), "-l", str(seconds),
           *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def percentiles(port: int, queries: Path, seconds: float, extra: list[str]) -> tuple[float, float]:
    """p50 and p99 in ms from dnsperf -v's per-query latencies."""
    out = dnsperf(port, queries, seconds, ["-v", *extra])
    samples = sorted(float(m.group(1)) for m in
                     re.finditer(r"^> \w+ \S+ \S+ ([\d.]+)$", out, re.MULTILINE))
    if not samples:
        sys.exit(f"no per-query latencies in dnsperf -v output:\n{out[:2000]}")
    return tuple(  # type: ignore[return-value]
        samples[min(len(samples) - 1, int(p * len(samples)))] * 1000 for p in (0.50, 0.99)
    )


def measure(port: int, queries: Path, args: argparse.Namespace) -> Result:
    dnsperf(port, queries, 1, ["-n", "1"])  # warm-up: one pass over the query file
    out = dnsperf(port, queries, args.seconds, [])
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lat = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min [\d.]+, max ([\d.]+)\)", out)
    lost = re.search(r"Queries lost:\s+(.*)", out)
    assert qps is not None and lat is not None and lost is not None, out
    p50, p99 = percentiles(port, queries, args.latency_seconds, [])
    at_rate = {rate: percentiles(port, queries, args.latency_seconds, ["-Q", str(rate)])
               for rate in args.latency_qps}
    return Result(float(qps.group(1)), float(lat.group(1)) * 1000, float(lat.group(2)) * 1000,
                  lost.group(1).strip(), p50, p99, at_rate)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20, help="throughput run per server")
    ap.add_argument("--latency-seconds", type=float, default=5,
                    help="length of each verbose run (full load, then --latency-qps)")
    ap.add_argument("--latency-qps", type=lambda t: [int(x) for x in t.split(",")], default=[5000, 20000],
                    help="offered loads of the fixed-rate latency runs, comma-separated")
    ap.add_argument("--split-seconds", type=float, default=5,
                    help="length of the hits-only and NXDOMAIN-only runs per server")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure both servers this many times, alternating who goes first")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1, help="gitorch UDP worker threads")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.port, args.services, args.workers)
        return

    ensure_tools()
    table = names(args.services)
    rng = random.Random(42)
    missing = [f"svc-missing-{i}.ns-{i % 10}.svc.{DOMAIN}" for i in range(len(table) // 10)]
    lines = [f"{name} A" for name, _ in table] + [f"{name} A" for name in missing]
    rng.shuffle(lines)

    with tempfile.TemporaryDirectory(prefix="gitorch-dns-bench-") as tmp:
        work = Path(tmp)
        queries = work / "queries.txt"
        queries.write_text("\n".join(lines) + "\n")
        hosts = work / "hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in table))

        gitorch = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--services", str(args.services),
             "--workers", str(args.workers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        dnsmasq_port = free_port()
        dnsmasq = subprocess.Popen(
            ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
             "--pid-file=", f"--port={dnsmasq_port}", f"--listen-address={HOST}",
             "--bind-interfaces", f"--addn-hosts={hosts}", f"--local=/{DOMAIN}/",
             "--cache-size=10000", "--user=root"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            assert gitorch.stdout is not None
            ready = gitorch.stdout.readline().split()
            if not ready or ready[0] != "ready":
                sys.exit("gitorch DNS server did not start")
            ports = {"gitorch": int(ready[1]), "dnsmasq": dnsmasq_port}
            for label, port in ports.items():
                check(port, label, table, missing[0])
            rounds: list[dict[str, Result]] = []
            for i in range(args.rounds):
                # Alternate who goes first: other load on the machine comes and goes.
                order = list(ports) if i % 2 == 0 else list(reversed(ports))
                rounds.append({label: measure(ports[label], queries, args) for label in order})
            # NXDOMAIN as cheap as a hit? Hits only, then in-zone misses only.
            hits, misses = work / "hits.txt", work / "misses.txt"
            hits.write_text("".join(f"{name} A\n" for name, _ in table))
            misses.write_text("".join(f"{name} A\n" for name in missing))
            split: dict[str, dict[str, float]] = {}
            for label, port in ports.items():
                for kind, path in (("hits", hits), ("NXDOMAIN", misses)):
                    out = dnsperf(port, path, args.split_seconds, [])
                    found = re.search(r"Queries per second:\s+([\d.]+)", out)
                    assert found is not None, out
                    split.setdefault(label, {})[kind] = float(found.group(1))
        finally:
            for proc in (gitorch, dnsmasq):
                proc.kill()
                proc.wait()

    rates = " and ".join(f"{r} qps" for r in args.latency_qps)
    print(f"{len(table)} names + {len(missing)} NXDOMAIN; dnsperf -l {args.seconds:g} for qps, "
          f"avg and max; p50/p99 from {args.latency_seconds:g} s runs with -v, at full load "
          f"(100 queries outstanding) and at {rates}")
    ratios = []
    for i, results in enumerate(rounds, 1):
        for label in ports:
            r = results[label]
            print(f"round {i} {label:8} {r.qps:8.0f} qps  avg {r.avg_ms:.3f} ms  "
                  f"max {r.max_ms:.2f} ms  lost {r.lost}  |  full load p50 {r.p50_ms:.3f} "
                  f"p99 {r.p99_ms:.3f} ms" + "".join(
                      f"  |  @{rate} qps p50 {p50:.3f} p99 {p99:.3f} ms" for rate, (p50, p99) in r.at_rate.items()))
        ratios.append(results["gitorch"].qps / results["dnsmasq"].qps)
    for label, by_kind in split.items():
        print(f"{label:8} hits only {by_kind['hits']:8.0f} qps, in-zone NXDOMAIN only {by_kind['NXDOMAIN']:8.0f} "
              f"qps ({by_kind['NXDOMAIN'] / by_kind['hits']:.2f}x)")
    if len(ratios) > 1:
        for label in ports:
            print(f"{label:8} median over {len(rounds)} rounds: " + "  ".join(
                f"@{rate} qps p99 {statistics.median(r[label].at_rate[rate][1] for r in rounds):.3f} ms"
                for rate in args.latency_qps))
        print("per-round ratios: " + " ".join(f"{r:.2f}" for r in ratios) + " (median below)")
    print(f"gitorch/dnsmasq qps ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
