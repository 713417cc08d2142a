"""Benchmark the embedding API under load: the micro-batching service against a naive server and the in-process limit.

    uv run python bench/bench_api.py                    # 32 clients, 120 s sustained run of the service
    uv run python bench/bench_api.py --duration 20      # a quick run

One run, one model (the real sentence-transformers/all-MiniLM-L6-v2, loaded offline), one backend (``--backend``),
the same real abstracts (title, newline, abstract of the embedded sample), ``--clients`` concurrent clients that
each keep one request in flight, one abstract per request:

- (c) limit: the backend's own batched encode in this process, with no HTTP, JSON or queueing at all, two ways,
  each timed before and after the servers: one call of ``--clients`` texts on every core, and the service's own
  layout (its workers in parallel threads, each encoding its share of ``--clients`` texts per call with its own
  replica of the model and its intra-op threads); the best of the four runs is the limit;
- (a) service: ``python -m arxiv_embeddings.api`` in its own process, driven by the async (aiohttp) load generator of
  ``arxiv_embeddings.loadtest`` for ``--duration`` seconds after a warm-up; its resident memory is sampled
  through the run (start, end, peak) and its mean batch size read from ``/metrics``;
- (b) naive: a FastAPI server that encodes each request on its own, as blocking code is usually written (a plain
  ``def`` route, which FastAPI runs in its thread pool, so requests encode concurrently); and (b') the same
  encode in an ``async def`` route (requests encode one at a time on the event loop). Both validate the body with
  pydantic and write the JSON the way the service does, so the difference is the batching.

The load generator shares the machine's cores with the server, as it would with other processes in production.
Prints the figures side by side and the targets: (a) >= 0.8 x (c), (a) >= 3 x (b), zero errors in (a). Beside
texts/s it prints texts per CPU-second of the serving process (for (c), of this process): on a machine shared
with other jobs, a server with more runnable threads gets a larger share of the cores, so wall-clock rates there
also measure the scheduler; CPU-seconds measure the work each design spends per text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------ naive server
class NaiveBody(BaseModel):
    input: str


def naive_server(args: argparse.Namespace) -> None:
    """``--naive-server``: one request = one encode call; ``--naive-mode threadpool`` (def) or ``serial``."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response

    from arxiv_embeddings.backends import load_embedder

    embedder = load_embedder(args.model, backend=args.backend, variant=args.variant, device="cpu")
    if args.naive_threads:
        import torch

        torch.set_num_threads(args.naive_threads)
    embedder.encode(["warm-up"])
    app = FastAPI()

    def answer(text: str) -> Response:
        vectors = embedder.encode([text], batch_size=1)
        body = {"embeddings": vectors.tolist(), "model": args.model, "dimension": vectors.shape[1]}
        return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")

    if args.naive_mode == "threadpool":

        @app.post("/embed")
        def embed(body: NaiveBody) -> Response:
            return answer(body.input)

    else:

        @app.post("/embed")
        async def embed_serial(body: NaiveBody) -> Response:
            return answer(body.input)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------------------------- helpers
class Server:
    """A server subprocess, ready once /health answers 200; its RSS sampled while it runs."""

    def __init__(self, cmd: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.rss: list[tuple[float, int]] = []
        self._stop = threading.Event()

    def wait_ready(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"server exited with {self.proc.returncode}:\n{self.log.read()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"server at {self.url} not ready after {timeout}s")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def sample_rss(self, every: float = 2.0) -> threading.Thread:
        import psutil

        process = psutil.Process(self.proc.pid)

        def loop() -> None:
            started = time.monotonic()
            while not self._stop.is_set():
                self.rss.append((time.monotonic() - started, process.memory_info().rss))
                self._stop.wait(every)
            self.rss.append((time.monotonic() - started, process.memory_info().rss))

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def stop(self) -> int:
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()


def drive(server: Server, texts: list[str], clients: int, duration: float, warmup: float) -> tuple[Any, float]:
    """Warm up, then the measured load; also the server's texts per CPU-second over the measured run."""
    from arxiv_embeddings.loadtest import run_load

    if warmup > 0:
        asyncio.run(run_load(server.url, texts, clients, warmup))
    cpu = server.cpu_seconds()
    result = asyncio.run(run_load(server.url, texts[::-1], clients, duration))
    return result, (result.requests - result.errors) / max(server.cpu_seconds() - cpu, 1e-9)


def limit(embedder: Any, texts: list[str], clients: int, batch_size: int, seconds: float) -> tuple[float, float]:
    """(c), one call: texts/s of the backend's batched encode in this thread, ``clients`` texts per call, for
    ``seconds``; and texts per CPU-second of this process."""
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        chunk = [texts[(done + i) % len(texts)] for i in range(clients)]
        embedder.encode(chunk, batch_size=batch_size)
        done += len(chunk)
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu)


def limit_parallel(
    replicas: list[Any], texts: list[str], clients: int, batch_size: int, threads: int, seconds: float
) -> tuple[float, float]:
    """(c), the service's layout: one thread per replica (``threads`` intra-op threads each), each encoding
    ``clients / len(replicas)`` texts per call, for ``seconds``; texts/s and texts per CPU-second of this process."""
    share = max(1, clients // len(replicas))
    counts = [0] * len(replicas)
    start, cpu = time.perf_counter(), time.process_time()

    def work(k: int) -> None:
        if replicas[k].backend == "torch":
            import torch

            torch.set_num_threads(threads)
        offset = k * len(texts) // len(replicas)
        while time.perf_counter() - start < seconds:
            chunk = [texts[(offset + counts[k] + i) % len(texts)] for i in range(share)]
            replicas[k].encode(chunk, batch_size=batch_size)
            counts[k] += len(chunk)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(len(replicas))]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(counts) / (time.perf_counter() - start), sum(counts) / (time.process_time() - cpu)


def mean_batch(url: str) -> float | None:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for name in ("embedding_batch_size_sum", "embedding_batch_size_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[-1])
    count = values.get("embedding_batch_size_count")
    return values["embedding_batch_size_sum"] / count if count else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of the sustained service run (a)")
    parser.add_argument("--naive-duration", type=float, default=None, help="seconds per naive run (default 30)")
    parser.add_argument("--limit-duration", type=float, default=None, help="seconds of the in-process run (20)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of load before each measured run (default 30, at most --duration): the allocator's caches "
        "for the many padded shapes fill during the first minute or two (see bench/README.md)",
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--variant", default=None, help="torch precision or ONNX variant (default fp32 / export's)")
    parser.add_argument("--batch-size", type=int, default=None, help="serve.batch_size (default: configs)")
    parser.add_argument(
        "--encode-batch-size", type=int, default=None, help="serve.encode_batch_size, also the limit's (configs)"
    )
    parser.add_argument("--threads", type=int, default=None, help="serve.threads, also the limit's (configs)")
    parser.add_argument("--workers", type=int, default=None, help="serve.workers, also the limit's (configs)")
    parser.add_argument(
        "--naive-threads", type=int, default=None, help="torch threads of the naive servers (default: torch's own)"
    )
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="serve.batch_wait_ms (default: config)")
    parser.add_argument("--skip-serial", action="store_true", help="skip the serial naive server (b')")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="change this process's niceness (and its servers') by N; negative needs root (see bench/README.md)",
    )
    parser.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--naive-mode", default="threadpool", choices=("threadpool", "serial"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.naive_server:
        naive_server(args)
        return
    if args.nice:
        os.nice(args.nice)
    from arxiv_embeddings.api.settings import Settings

    serve_defaults = Settings.load()
    args.batch_size = args.batch_size or serve_defaults.batch_size
    args.encode_batch_size = args.encode_batch_size or serve_defaults.encode_batch_size
    args.threads = args.threads or serve_defaults.threads
    args.workers = args.workers or serve_defaults.workers
    if args.warmup is None:
        args.warmup = min(30.0, args.duration)
    naive_duration = args.naive_duration if args.naive_duration is not None else min(30.0, args.duration)
    limit_duration = args.limit_duration if args.limit_duration is not None else min(20.0, args.duration)

    from arxiv_embeddings.loadtest import sample_abstracts

    texts = sample_abstracts(2000)
    print(
        f"bench_api: {args.model} ({args.backend}), {args.clients} clients, one abstract per request, "
        f"micro-batches of <= {args.batch_size} texts encoded {args.encode_batch_size} at a time, "
        f"niceness {os.nice(0)}; {_load()}"
    )

    from arxiv_embeddings.api.runtime import cpu_layout
    from arxiv_embeddings.backends import load_embedder
    from arxiv_embeddings.backends.onnx_embedder import usable_cpus

    threads, workers = cpu_layout(args.threads, args.workers)
    cores = usable_cpus()
    # (c1): one call on every core; (c2): the service's layout (``workers`` replicas with ``threads`` each).
    embedder = load_embedder(args.model, backend=args.backend, variant=args.variant, device="cpu", threads=cores)
    if embedder.backend == "torch":
        import torch

        torch.set_num_threads(cores)
    layout = load_embedder(args.model, backend=args.backend, variant=args.variant, device="cpu", threads=threads)
    replicas = [layout] + [layout.replica() for _ in range(workers - 1)]
    embedder.encode(texts[: args.clients], batch_size=args.encode_batch_size)  # warm-up
    limit_parallel(replicas, texts, args.clients, args.encode_batch_size, threads, 2.0)  # warm-up
    info = f"{embedder.backend}/{embedder.variant}, {embedder.max_seq_length} tokens"
    one_call = f"one call of {args.clients} texts, {cores} thread(s)"
    parallel = f"{workers} worker(s) x {threads} thread(s), {max(1, args.clients // workers)} texts per call"

    def measure_limits(when: str) -> list[tuple[float, float]]:
        print(
            f"(c) in-process batched encode ({info}), {limit_duration:g}s each way, {when} the servers ...", flush=True
        )
        runs = [
            limit(embedder, texts, args.clients, args.encode_batch_size, limit_duration),
            limit_parallel(replicas, texts, args.clients, args.encode_batch_size, threads, limit_duration),
        ]
        print(f"    {one_call}: {runs[0][0]:.1f} texts/s; {parallel}: {runs[1][0]:.1f} texts/s; {_load()}", flush=True)
        return runs

    per_cpu: dict[str, float] = {}
    limits = measure_limits("before")

    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "MODEL_PATH", "API_KEY", "INDEX_PATH")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        port = _free_port()
        serve_args = [
            f"paths.root_dir={tmp}",
            f"serve.model_path={args.model}",
            f"serve.backend={args.backend}",
            "serve.device=cpu",
            "serve.search=false",
            "serve.host=127.0.0.1",
            f"serve.port={port}",
            f"serve.batch_size={args.batch_size}",
            f"serve.encode_batch_size={args.encode_batch_size}",
            f"serve.threads={threads}",
            f"serve.workers={workers}",
            "serve.access_log=false",
            "serve.log_level=WARNING",
            *([f"serve.variant={args.variant}"] if args.variant else []),
            *([f"serve.batch_wait_ms={args.batch_wait_ms}"] if args.batch_wait_ms is not None else []),
        ]
        print(f"(a) service, {args.duration:g}s after {args.warmup:g}s warm-up ...", flush=True)
        server = Server([sys.executable, "-m", "arxiv_embeddings.api", *serve_args], port, env)
        server.wait_ready()
        service = None
        try:
            from arxiv_embeddings.loadtest import run_load

            asyncio.run(run_load(server.url, texts, args.clients, args.warmup))
            sampler = server.sample_rss()
            cpu = server.cpu_seconds()
            service = asyncio.run(run_load(server.url, texts[::-1], args.clients, args.duration))
            per_cpu["a"] = (service.requests - service.errors) / max(server.cpu_seconds() - cpu, 1e-9)
            server._stop.set()
            sampler.join(10)
            batch = mean_batch(server.url)
        finally:
            code = server.stop()
        print(f"    {service.line()}; mean batch {batch:.1f} texts; exit code {code}; {_load()}")

        naive: dict[str, Any] = {}
        for mode in ("threadpool", *(() if args.skip_serial else ("serial",))):
            port = _free_port()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--naive-server", "--naive-mode", mode]
            cmd += ["--port", str(port), "--model", args.model, "--backend", args.backend]
            cmd += ["--variant", args.variant] if args.variant else []
            cmd += ["--naive-threads", str(args.naive_threads)] if args.naive_threads else []
            print(f"(b) naive server ({mode}), {naive_duration:g}s after {args.warmup:g}s warm-up ...", flush=True)
            server_b = Server(cmd, port, env)
            server_b.wait_ready()
            try:
                naive[mode], per_cpu[mode] = drive(server_b, texts, args.clients, naive_duration, args.warmup)
            finally:
                server_b.stop()
            print(f"    {naive[mode].line()}; {_load()}")

    limits += measure_limits("after")

    rss = server.rss
    start_mb, end_mb, peak_mb = rss[0][1] / 2**20, rss[-1][1] / 2**20, max(r for _, r in rss) / 2**20
    a, (c, per_cpu["c"]) = service.requests_per_s, max(limits)  # the limit: the better in-process run
    b = naive["threadpool"].requests_per_s

    def row(name: str, rate: float, result: Any | None, key: str) -> str:
        lat = (
            f"{result.percentile(50):>8.0f} {result.percentile(95):>8.0f} {result.percentile(99):>8.0f} "
            f"{result.errors:>7}"
            if result is not None
            else f"{'-':>8} {'-':>8} {'-':>8} {'-':>7}"
        )
        return f"{name:<38} {rate:>9.1f} {lat} {rate / c:>9.2f}x {per_cpu[key]:>10.2f}"

    print()
    head = f"{'':<38} {'texts/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} {'vs (c)':>10}"
    print(head + f" {'texts/CPU-s':>11}")
    runs = ", ".join(f"{r[0]:.1f}" for r in limits)
    print(row("(c) in-process batched encode (best)", c, None, "c") + f"   (runs: {runs})")
    print(row("(a) service (micro-batching)", a, service, "a"))
    print(row("(b) naive server, def route (threads)", b, naive["threadpool"], "threadpool"))
    if "serial" in naive:
        print(row("(b') naive server, async def (serial)", naive["serial"].requests_per_s, naive["serial"], "serial"))
    print()

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print(f"(a) / (c) = {a / c:.2f}x   target >= 0.8x   {verdict(a >= 0.8 * c)}")
    print(f"(a) / (b) = {a / b:.2f}x   target >= 3x     {verdict(a >= 3 * b)}")
    if "serial" in naive:
        print(f"(a) / (b') = {a / naive['serial'].requests_per_s:.2f}x")
    print(
        f"(a) errors = {service.errors} over {service.requests:,} requests in {service.seconds:.0f}s   target 0   "
        f"{verdict(service.errors == 0 and service.requests > 0)}"
    )
    print(
        f"(a) server RSS: start {start_mb:.0f} MiB, end {end_mb:.0f} MiB, peak {peak_mb:.0f} MiB "
        f"({len(rss)} samples over {rss[-1][0]:.0f}s; end - start {end_mb - start_mb:+.0f} MiB)"
    )
    mid_mb = next(r for t, r in rss if t >= rss[-1][0] / 2) / 2**20
    trace = ", ".join(
        f"{t:.0f}s {r / 2**20:.0f}" for t, r in rss[:: max(1, len(rss) // 8)] + ([rss[-1]] if len(rss) % 8 else [])
    )
    print(f"(a) RSS over the run (MiB): {trace}; second half {end_mb - mid_mb:+.0f} MiB")
    print(f"mean micro-batch of (a): {batch:.1f} texts")
    print(
        f"texts per CPU-second of the serving process: (a) {per_cpu['a']:.2f}, (b) {per_cpu['threadpool']:.2f} "
        f"-> (a) / (b) = {per_cpu['a'] / per_cpu['threadpool']:.2f}x"
    )
    print(_load())


if __name__ == "__main__":
    main()
