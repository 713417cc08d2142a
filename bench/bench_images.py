"""What each image installs: the locked `uv sync` of dockerfiles/*.dockerfile run into temporary environments, with
their size on disk and largest packages side by side (the images add their base: python:3.11-slim, ~125 MB, or the
CUDA runtime).

    uv run python bench/bench_images.py

The sync times depend on uv's cache (warm here: files are linked from it); the sizes do not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALLS = {
    "serving (api.dockerfile)": ["--no-default-groups"],
    "training (train.dockerfile)": ["--no-dev"],
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


def main() -> None:
    uv = shutil.which("uv")
    if uv is None:
        sys.exit("uv is needed")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
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
    print(f"{'install':<28} {'size':>9} {'sync':>7}  largest")
    for name, size, seconds, top in rows:
        largest = ", ".join(f"{n} {b / 2**20:.0f}M" for b, n in top)
        print(f"{name:<28} {size / 2**20:>7.0f}MB {seconds:>6.1f}s  {largest}")
    serving, full = rows[0][1], rows[-1][1]
    print(f"serving / development size: {serving / full:.3f}")


if __name__ == "__main__":
    main()
