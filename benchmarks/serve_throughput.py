"""Serving throughput of ``medlora serve`` (llama.cpp) under concurrent OpenAI-style clients.

Starts ``medlora serve GGUF`` on a free loopback port, runs ``--clients`` threads that each
send ``--requests`` chat completions of ``--max-tokens`` tokens, and prints requests/s,
latency percentiles, completion tokens/s and errors, with the machine it ran on.

    python benchmarks/serve_throughput.py exports/clinical/gguf/clinical-Q4_K_M.gguf
    python benchmarks/serve_throughput.py model.gguf --clients 8 --requests 50 --max-tokens 4
    python benchmarks/serve_throughput.py --smoke   # the tiny model's F16 GGUF, 2 x 3 requests

llama.cpp runs on the CPU here whatever the machine has; vLLM's GPU serving is not measured
by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        reply: dict[str, Any] = json.loads(response.read())
        return reply


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, nargs="?", help="the GGUF file to serve")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads")
    parser.add_argument(
        "--smoke", action="store_true", help="the tiny model's F16 GGUF, 2 clients x 3 requests"
    )
    args = parser.parse_args(argv)
    if not args.smoke:
        if args.gguf is None:
            parser.error("a GGUF file is required (or --smoke)")
        bench(args)
        return
    from medlora.export import write_gguf
    from medlora.testing import make_tiny_llama

    args.clients, args.requests, args.threads = 2, 3, args.threads or 1
    with tempfile.TemporaryDirectory() as work:
        model = make_tiny_llama(Path(work) / "tiny", seed=0)
        args.gguf = Path(work) / "tiny-F16.gguf"
        write_gguf(model, args.gguf, outtype="F16")
        bench(args)


def bench(args: argparse.Namespace) -> None:
    """Serve ``args.gguf``, run the clients, print the figures."""
    port = _port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "medlora.cli", "serve", str(args.gguf), "--port", str(port)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=5).close()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.3)
        latencies: list[float] = []
        tokens = [0]
        errors: list[str] = []
        lock = threading.Lock()

        def client(worker: int) -> None:
            for i in range(args.requests):
                body = {
                    "messages": [
                        {"role": "user", "content": f"Case {worker}-{i}: what is sepsis?"}
                    ],
                    "max_tokens": args.max_tokens,
                    "temperature": 0,
                }
                started = time.perf_counter()
                try:
                    reply = _post(f"{url}/v1/chat/completions", body)
                except Exception as exc:  # every failure is counted, none stops the run
                    with lock:
                        errors.append(repr(exc))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)
                    tokens[0] += int(reply["usage"]["completion_tokens"])

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(w,)) for w in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(
        f"machine: {platform.machine()} {platform.processor() or platform.platform()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"model: {args.gguf.name} ({args.gguf.stat().st_size / 1e6:.1f} MB)")
    print(f"{args.clients} clients x {args.requests} requests, max_tokens {args.max_tokens}")
    print(f"  requests ok {len(latencies)}, errors {len(errors)}, wall {seconds:.1f} s")
    print(
        f"  throughput {len(latencies) / seconds:.1f} req/s, "
        f"{tokens[0] / seconds:.1f} completion tok/s"
    )
    print(f"  latency p50 {quantiles[49] * 1000:.0f} ms, p95 {quantiles[94] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
