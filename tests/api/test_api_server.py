"""The container command, for real: ``python -m arxiv_embeddings.api`` on ``$PORT`` with JSON logs, the load-test
CLI against it, and a graceful exit on SIGTERM with requests in flight."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers.api import wait_serving

from arxiv_embeddings.api.settings import ENV_PREFIX, ENV_VARS

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_process_serves_load_and_exits_cleanly_on_sigterm(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and not k.upper().startswith(ENV_PREFIX)}
    env.pop("WANDB_MODE", None)  # transformers prints a plain line when it is set; a server does not set it
    env.update(PORT=str(port), LOG_JSON="1", MODEL_PATH=str(tiny_model_dir), HOST="127.0.0.1")
    cmd = [sys.executable, "-m", "arxiv_embeddings.api", f"paths.root_dir={tmp_path}", "serve.search=false"]
    # The log goes to a file, not a pipe: an undrained pipe fills (64 KiB: a few hundred access-log lines) and then
    # blocks the server's next write, so requests would hang for reasons of the test's own making.
    log_path = tmp_path / "server.log"
    log_file = log_path.open("w")
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(server, url, log_path)
        assert httpx.get(f"{url}/health").json()["model_path"] == str(tiny_model_dir)

        # The official OpenAI client, unchanged: it lists the models, then embeds with one of them.
        import numpy as np
        import openai

        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        listed = [m.id for m in sdk.models.list()]
        assert listed[0] == tiny_model_dir.name and f"{tiny_model_dir.name}:search" in listed
        texts = ["Graph neural networks for molecules", "Dark matter in dwarf galaxies"]
        for fmt in ("float", "base64"):  # the client asks for base64 unless told otherwise, and decodes it
            got = sdk.embeddings.create(
                model=listed[0], input=texts, **({"encoding_format": fmt} if fmt == "float" else {})
            )
            assert got.model == tiny_model_dir.name and [d.index for d in got.data] == [0, 1]
            assert got.usage.prompt_tokens > 0
            own = httpx.post(f"{url}/embed", json={"input": texts}).json()["embeddings"]
            np.testing.assert_allclose(np.asarray([d.embedding for d in got.data]), np.asarray(own), atol=1e-5)

        load = subprocess.run(
            [sys.executable, "-m", "arxiv_embeddings.loadtest", "--url", url, "--duration", "2", "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert load.returncode == 0, load.stdout + load.stderr
        summary = json.loads(load.stdout.strip().splitlines()[-1])
        assert summary["requests"] > 0 and summary["errors"] == 0
        assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]

        # Requests in flight when SIGTERM arrives finish; none gets a 5xx.
        statuses: list[int] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=url, timeout=30) as http:
                while not stop.is_set():
                    try:
                        statuses.append(http.post("/embed", json={"input": ["some text"] * 8}).status_code)
                    except httpx.HTTPError:
                        return  # the server stopped accepting connections

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(statuses) < 8:
            assert time.monotonic() < deadline and any(t.is_alive() for t in threads), statuses
            time.sleep(0.01)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log_file.close()
    output = log_path.read_text()
    assert server.returncode == 0, output
    assert statuses and all(s == 200 for s in statuses), statuses
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert records and all({"severity", "message", "time"} <= set(r) for r in records)
    messages = " ".join(r["message"] for r in records)
    assert "Ready in" in messages and "Shutting down" in messages
    assert not [line for line in output.splitlines() if line.strip() and not line.startswith("{")], output
