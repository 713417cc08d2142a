"""bench/bench_gpu.py, the script a lent GPU runs once, runs end to end (on the CPU, with the tiny model) and
writes its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_bench_runs_on_a_cpu_and_writes_its_figures(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "bench_gpu.py"),
        "--device=cpu",
        f"--model={tiny_model_dir}",
        "--pairs=32",
        "--batch-size=16",
        "--mini-batch=4",
        "--losses=cached_mnrl,mnrl",
        "--workers=0",
        "--bootstrap=50",
        "--max-papers=150",
        f"--out={out}",
        "train.freeze_layers=1",
        "train.max_seq_length=32",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "say nothing about the GPU target" in proc.stdout
    figures = json.loads(out.read_text())
    assert figures["machine"]["device"] == "cpu" and figures["machine"]["gpu"] is None
    runs = figures["runs"]
    assert set(runs) == {"cached_mnrl", "mnrl"}
    assert (
        runs["cached_mnrl"]["loss"] == "CachedMultipleNegativesRankingLoss" and runs["cached_mnrl"]["mini_batch"] == 4
    )
    for run in runs.values():
        assert run["steps"] == 2 and run["pairs_per_s"] > 0 and run["peak_gpu_mem_gib"] is None
        for split in ("test", "fresh"):
            assert 0.0 <= run[f"{split} P@10"] <= 1.0
            low, diff, high = run[f"{split} P@10 gain"][1], run[f"{split} P@10 gain"][0], run[f"{split} P@10 gain"][2]
            assert low <= diff <= high
    assert "| CachedMultipleNegativesRankingLoss | 16 |" in proc.stdout
