"""What each image installs, and how fast the API starts from it: the locked `uv sync` of dockerfiles/*.dockerfile
run into temporary environments, with their size on disk and largest packages side by side (the images add their
base: python:3.11-slim, ~125 MB, or the CUDA runtime), then the cold start of the API (process start to the first
200 on /health) serving all-MiniLM-L6-v2 from each: ONNX (fp32 export) from the serving install, torch from the
training one, alternated, ``--starts`` times each.

    uv run python bench/bench_images.py
    uv run python bench/bench_images.py --starts 5

The sync times depend on uv's cache (warm here: files are linked from it); the sizes do not. The start times are
with the files in the page cache (every start after the first reads them from memory), as a restarted instance
on the same machine sees them; a fresh Cloud Run instance also pulls and unpacks the image first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALLS = {
    "serving (api.dockerfile)": ["--no-default-groups"],
    "training (train.dockerfile)": ["--no-default-groups", "--extra", "train"],
    "development (uv sync)": [],
}


def tree_bytes(path: Path) -> int:
    seen: set[int] = set()
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cold_start(python: Path, model: Path, backend: str, root: Path) -> float:
    """Seconds from starting ``python -m arxiv_embeddings.api`` to its first 200 on /health."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "INDEX_PATH", "BACKEND", "VARIANT")}
    env.update(PORT=str(port), HOST="127.0.0.1", MODEL_PATH=str(model), BACKEND=backend, VARIANT="fp32")
    cmd = [str(python), "-m", "arxiv_embeddings.api", f"paths.root_dir={root}", "serve.search=false"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{python} {backend}: the server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"{python} {backend}: not ready after 300 s")
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def import_seconds(python: Path, module: str) -> float:
    """Seconds a fresh ``python`` takes to import ``module`` (and what it imports)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


def exported_minilm(folder: Path) -> Path:
    """A copy of the bundled all-MiniLM-L6-v2 with its fp32 ONNX export (what `inv export` writes first)."""
    from arxiv_embeddings.backends.loading import resolve_model
    from arxiv_embeddings.export.build import build_onnx

    model = folder / "minilm"
    shutil.copytree(resolve_model("sentence-transformers/all-MiniLM-L6-v2"), model)
    (model / "onnx").mkdir()
    build_onnx(model, model / "onnx", levels=[], arch=None)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=3, help="cold starts per install (default 3)")
    args = parser.parse_args()
    uv = shutil.which("uv")
    if uv is None:
        sys.exit("uv is needed")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        venvs = {}
        for name, flags in INSTALLS.items():
            venv = Path(tmp) / name.split()[0]
            started = time.perf_counter()
            subprocess.run(
                [uv, "sync", "--locked", "--quiet", *flags],
                cwd=REPO,
                env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON": sys.executable},
                check=True,
            )
            seconds = time.perf_counter() - started
            site = next(venv.glob("lib/python*/site-packages"))
            packages = sorted(
                ((tree_bytes(p) if p.is_dir() else p.stat().st_size, p.name) for p in site.iterdir()), reverse=True
            )
            rows.append((name, tree_bytes(venv), seconds, packages[:4]))
            venvs[name.split()[0]] = venv
        print(f"{'install':<28} {'size':>9} {'sync':>7}  largest")
        for name, size, seconds, top in rows:
            largest = ", ".join(f"{n} {b / 2**20:.0f}M" for b, n in top)
            print(f"{name:<28} {size / 2**20:>7.0f}MB {seconds:>6.1f}s  {largest}")
        sizes = {name.split()[0]: size for name, size, _, _ in rows}
        print(f"serving / training size: {sizes['serving'] / sizes['training']:.3f}")
        print(f"serving / development size: {sizes['serving'] / sizes['development']:.3f}")

        model = exported_minilm(Path(tmp))
        runs: dict[str, list[float]] = {"onnx (serving install)": [], "torch (training install)": []}
        cold_start(venvs["serving"] / "bin" / "python", model, "onnx", Path(tmp))  # first reads of the files
        cold_start(venvs["training"] / "bin" / "python", model, "torch", Path(tmp))
        for _ in range(args.starts):
            runs["onnx (serving install)"].append(
                cold_start(venvs["serving"] / "bin" / "python", model, "onnx", Path(tmp))
            )
            runs["torch (training install)"].append(
                cold_start(venvs["training"] / "bin" / "python", model, "torch", Path(tmp))
            )
        print(
            f"\ncold start of the API with all-MiniLM-L6-v2, process start to the first 200 on /health ({args.starts} each):"
        )
        for name, values in runs.items():
            print(
                f"{name:<26} median {statistics.median(values):5.2f}s  (runs: {', '.join(f'{v:.2f}' for v in values)})"
            )
        onnx, torch = (statistics.median(v) for v in runs.values())
        print(f"onnx / torch cold start: {onnx / torch:.3f}")

        print(f"\nimport time in a fresh process, median of {args.starts}:")
        for install, module in (
            ("serving", "onnxruntime"),
            ("serving", "arxiv_embeddings.api"),
            ("training", "torch"),
            ("training", "sentence_transformers"),
        ):
            python = venvs[install] / "bin" / "python"
            seconds = statistics.median(import_seconds(python, module) for _ in range(args.starts))
            print(f"{install:<9} import {module:<24} {seconds:5.2f}s")


if __name__ == "__main__":
    main()
