"""Load test of `vramfit serve` on loopback: sustained requests per second, latency percentiles, and the server
process's memory (RSS) over many requests, which must stay flat (no leak per request).

    python bench/load_test.py                       # 100,000 requests, 4 client threads (the documented run)
    python bench/load_test.py --requests 5000       # a quick look
    python bench/load_test.py --schemathesis        # the full schemathesis pass instead (see docs/RELIABILITY.md)

It starts `python -m vramfit serve` on 127.0.0.1 (a free port), waits until it answers, sends a warm-up of
5,000 requests (bounded caches fill: their memory is not a leak, see WARMUP), then the measured
requests from client threads with keep-alive connections, cycling through a mix: estimates of catalog models
in inference and training with varying batch and length, a pasted config.json, a search, requests that are
refused (422, 404) and catalog look-ups. RSS is read from /proc/<pid>/status (VmRSS) at the start (after the
warm-up), every tenth of the run, and the end. Nothing here leaves the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

# Bounded caches fill during the first few thousand requests (vramfit.memory.tensors._LISTED: 64 architectures,
# vramfit.memory.weights._REQUESTS: 256 priced tensor lists; a request loads its model anew, so each fills an
# entry): measured in process with tracemalloc, traced memory grows for about 4,000 requests of this mix and is
# flat after. The warm-up covers that; growth after it would be a leak.
WARMUP = 5_000


def request_mix() -> list[tuple[str, str, Any]]:
    """(method, path, JSON body): what the page and API users send, and what they get wrong."""
    from vramfit.model.catalog import catalog_config

    mix: list[tuple[str, str, Any]] = []
    for batch, seq in itertools.product((1, 4, 16), (512, 4096)):
        mix.append(("POST", "/api/estimate", {"model": "Qwen/Qwen3-0.6B",
                                              "settings": {"workload": {"batch_size": batch, "seq_len": seq}}}))
    mix += [
        ("POST", "/api/estimate", {"model": "meta-llama/Llama-3.1-8B", "settings": {
            "workload": {"mode": "training", "batch_size": 2, "seq_len": 2048},
            "training": {"finetune": "lora", "grad_ckpt": "full"}}}),
        ("POST", "/api/estimate", {"model": "Qwen/Qwen3-30B-A3B", "settings": {"runtime": {"name": "vllm"},
                                                                               "gpu": "h100-80gb"}}),
        ("POST", "/api/estimate", {"config": catalog_config("Qwen/Qwen3-8B")}),
        ("POST", "/api/check", {"model": "Qwen/Qwen3-8B", "settings": {"gpu": "rtx-4090"}}),
        ("POST", "/api/estimate", {"model": "Qwen/Qwen3-0.6B", "settings": {"workload": {"batch_size": 0}}}),
        ("POST", "/api/estimate", {"model": "nobody/no-such-model"}),
        ("GET", "/api/catalog?q=llama", None),
        ("GET", "/api/gpus", None),
    ]
    return mix


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, "-m", "vramfit", "serve", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/gpus", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("vramfit serve did not answer within 60 s")


class Load:
    """Sends `total` requests from `threads` threads; records each latency and status, and samples RSS."""

    def __init__(self, base: str, pid: int, total: int, threads: int) -> None:
        self.base, self.pid, self.total, self.threads = base, pid, total, threads
        self.mix = request_mix()
        self.latencies: list[float] = [0.0] * total
        self.statuses: dict[int, int] = {}
        self.rss: list[tuple[int, int]] = []
        self._next = itertools.count()
        self._lock = threading.Lock()

    def run(self) -> float:
        self.rss.append((0, rss_bytes(self.pid)))
        workers = [threading.Thread(target=self._work) for _ in range(self.threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
        self.rss.append((self.total, rss_bytes(self.pid)))
        return elapsed

    def _work(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            while (index := next(self._next)) < self.total:
                method, path, body = self.mix[index % len(self.mix)]
                began = time.perf_counter()
                response = client.request(method, path, json=body) if body is not None else client.get(path)
                self.latencies[index] = time.perf_counter() - began
                with self._lock:
                    self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                    if index and index % (self.total // 10) == 0:
                        self.rss.append((index, rss_bytes(self.pid)))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(load: Load, elapsed: float) -> dict[str, Any]:
    rss = sorted(load.rss)
    middle = min(rss, key=lambda sample: abs(sample[0] - load.total // 2))
    ms = [1000 * s for s in load.latencies]
    return {
        "requests": load.total, "client_threads": load.threads, "seconds": round(elapsed, 1),
        "requests_per_second": round(load.total / elapsed, 1),
        "latency_ms": {"p50": round(statistics.median(ms), 2), "p90": round(percentile(ms, 0.90), 2),
                       "p99": round(percentile(ms, 0.99), 2), "max": round(max(ms), 2)},
        "statuses": dict(sorted(load.statuses.items())),
        "rss_bytes": {"start": rss[0][1], "middle": middle[1], "end": rss[-1][1]},
        "rss_samples": [{"after_requests": n, "bytes": b} for n, b in rss],
        "rss_growth_bytes": rss[-1][1] - rss[0][1],
    }


def run_schemathesis(examples: int) -> int:
    """Every operation of the OpenAPI spec, `examples` generated requests each, in process; 5xx fails."""
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(Path(__file__).resolve().parents[1] / "tests" / "test_http_fuzz.py"),
                            "-k", "schemathesis"], env={**os.environ, "VRAMFIT_SCHEMA_EXAMPLES": str(examples)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="measured requests (default: 100,000)")
    parser.add_argument("--threads", type=int, default=4, help="client threads (default: 4)")
    parser.add_argument("--out", help="also write the report here as JSON")
    parser.add_argument("--schemathesis", type=int, nargs="?", const=500, metavar="EXAMPLES",
                        help="run the schemathesis pass with EXAMPLES per operation (default 500) and stop")
    args = parser.parse_args()
    if args.schemathesis:
        return run_schemathesis(args.schemathesis)
    port = free_port()
    server = start_server(port)
    try:
        warm = Load(f"http://127.0.0.1:{port}", server.pid, WARMUP, args.threads)
        warm.run()
        load = Load(f"http://127.0.0.1:{port}", server.pid, args.requests, args.threads)
        result = report(load, load.run())
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
