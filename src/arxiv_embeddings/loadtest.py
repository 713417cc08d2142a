"""Load test of a running API: ``concurrency`` clients, each sending one request at a time, for ``duration`` seconds.

    uv run inv loadtest --url http://127.0.0.1:8080 --concurrency 32 --duration 30
    python -m arxiv_embeddings.loadtest --url http://127.0.0.1:8080 --route /v1/embeddings

Each request embeds one real abstract of the embedded sample (a different one each time). Reports requests/s,
texts/s, latency percentiles (p50/p95/p99, max), errors by status and the load generator's own CPU time per request;
exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import numpy as np

ROUTES = ("/embed", "/v1/embeddings", "/search")


@dataclass
class LoadResult:
    """What a load test measured."""

    requests: int
    errors: int
    #: The sending window (``duration``); requests still in flight at its end finish but do not count in the rate.
    seconds: float
    concurrency: int
    latencies_ms: list[float] = field(repr=False)
    error_kinds: dict[str, int] = field(default_factory=dict)
    #: Successful requests that finished inside the window.
    in_window: int = 0
    #: CPU seconds the load generator itself spent (this process), to judge what it took from a server beside it.
    client_cpu_s: float = 0.0

    @property
    def requests_per_s(self) -> float:
        """Successful requests finished inside the window, per second of the window."""
        return self.in_window / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "seconds": round(self.seconds, 2),
            "concurrency": self.concurrency,
            "requests_per_s": round(self.requests_per_s, 2),
            "p50_ms": round(self.percentile(50), 1),
            "p95_ms": round(self.percentile(95), 1),
            "p99_ms": round(self.percentile(99), 1),
            "max_ms": round(max(self.latencies_ms, default=float("nan")), 1),
            "client_cpu_ms_per_request": round(1000 * self.client_cpu_s / self.requests, 2) if self.requests else None,
        }

    def line(self) -> str:
        s = self.summary()
        return (
            f"{s['requests']:,} requests from {s['concurrency']} clients in a {s['seconds']}s window: "
            f"{s['requests_per_s']:.1f} req/s, latency p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, "
            f"p99 {s['p99_ms']} ms, max {s['max_ms']} ms, errors {s['errors']}"
            + (f" {s['error_kinds']}" if s["error_kinds"] else "")
            + f"; load generator CPU {s['client_cpu_ms_per_request']} ms/request"
        )


def sample_abstracts(n: int = 2000) -> list[str]:
    """Real abstracts (title, newline, abstract) from the sample shipped with the package."""
    import pyarrow.parquet as pq

    from arxiv_embeddings.papers import SAMPLE_PATH, paper_text

    table = pq.read_table(SAMPLE_PATH, columns=["title", "abstract"])
    return paper_text(table.slice(0, n), "title_abstract")


def body_for(route: str, text: str) -> dict[str, Any]:
    if route == "/embed":
        return {"input": text}
    if route == "/v1/embeddings":
        return {"input": text, "model": "arxiv-embeddings"}
    if route == "/search":
        return {"text": text, "k": 10}
    raise ValueError(f"Unknown route {route!r}; choose one of {', '.join(ROUTES)}.")


async def run_load(
    url: str,
    texts: Sequence[str],
    concurrency: int = 32,
    duration: float = 30.0,
    route: str = "/embed",
    api_key: str | None = None,
    timeout: float = 60.0,
) -> LoadResult:
    """Drive ``url`` with ``concurrency`` clients for ``duration`` seconds (requests in flight at the end finish)."""
    if not texts:
        raise ValueError("No texts to send.")
    bodies = [json.dumps(body_for(route, t)).encode() for t in texts]
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    counter = 0
    in_window = 0
    target = f"{url.rstrip('/')}{route}"
    # aiohttp, a light client: the load generator usually shares the machine with the server it measures, so the
    # CPU it spends per request (reported in the result) is taken from the server.
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    cpu_started = time.process_time()
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=client_timeout) as client:
        started = time.perf_counter()
        stop_at = started + duration

        async def worker() -> None:
            nonlocal counter, in_window
            while time.perf_counter() < stop_at:
                body = bodies[counter % len(bodies)]
                counter += 1
                t0 = time.perf_counter()
                ok = False
                try:
                    async with client.post(target, data=body) as response:
                        await response.read()
                        ok = response.status == 200
                        if not ok:
                            kinds[str(response.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as err:
                    kinds[type(err).__name__] += 1
                done = time.perf_counter()
                latencies.append((done - t0) * 1000)
                in_window += ok and done <= stop_at

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(
        requests=len(latencies),
        errors=sum(kinds.values()),
        seconds=duration,
        concurrency=concurrency,
        latencies_ms=latencies,
        error_kinds=dict(kinds),
        in_window=in_window,
        client_cpu_s=time.process_time() - cpu_started,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="base URL of the running API")
    parser.add_argument("--concurrency", type=int, default=32, help="clients, each with one request in flight")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to keep sending")
    parser.add_argument("--route", default="/embed", choices=ROUTES)
    parser.add_argument("--api-key", default=None, help="bearer key, if the server has one (or env API_KEY)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0:
        parser.error("--concurrency must be >= 1 and --duration > 0")
    api_key = args.api_key or os.environ.get("API_KEY")
    try:
        health = httpx.get(f"{args.url.rstrip('/')}/health", timeout=10)
    except httpx.HTTPError as err:
        print(f"Cannot reach {args.url}: {err}. Start the server with 'uv run inv serve'.", file=sys.stderr)
        sys.exit(2)
    if health.status_code != 200:
        print(f"{args.url}/health answers {health.status_code}: {health.text}", file=sys.stderr)
        sys.exit(2)
    print(f"Load test of {args.url}{args.route}: {args.concurrency} clients for {args.duration:g}s ...")
    result = asyncio.run(run_load(args.url, sample_abstracts(), args.concurrency, args.duration, args.route, api_key))
    print(json.dumps(result.summary()) if args.json else result.line())
    if result.requests == 0 or result.errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
