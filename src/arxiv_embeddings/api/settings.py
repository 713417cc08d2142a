"""Settings of the embedding API: the ``serve:`` section of ``configs/base.yaml``, overridden by the environment.

Precedence, highest first:

1. values passed to :meth:`Settings.load` (tests, embedding applications);
2. the Cloud Run names of :data:`ENV_VARS` (``MODEL_PATH``, ``PORT``, ``API_KEY``, ...);
3. ``SERVE_<FIELD>`` for any field (``SERVE_BATCH_WAIT_MS=2``);
4. ``configs/serve.yaml`` (= ``base.yaml``) composed with Hydra overrides (``serve.port=9000``).

Every default lives in the YAML once; the fields below only declare types and limits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from arxiv_embeddings.config import ConfigError, compose, to_plain

#: Environment variables a container sets without the ``SERVE_`` prefix (Cloud Run sets ``PORT`` itself).
ENV_VARS: dict[str, str] = {
    "MODEL_PATH": "model_path",
    "INDEX_PATH": "index_path",
    "PORT": "port",
    "HOST": "host",
    "API_KEY": "api_key",
    "API_KEY_FILE": "api_key_file",
    "LOG_JSON": "log_json",
    "LOG_LEVEL": "log_level",
    "BACKEND": "backend",
    "VARIANT": "variant",
    "DEVICE": "device",
    "SERVED_MODEL_NAME": "served_name",
}
ENV_PREFIX = "SERVE_"

_config_values: ContextVar[dict[str, Any] | None] = ContextVar("serve_config_values", default=None)


class _ConfigSource(PydanticBaseSettingsSource):
    """The composed ``serve:`` section (lowest precedence)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_config_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_config_values.get() or {})


class _CloudRunEnvSource(PydanticBaseSettingsSource):
    """The unprefixed variables of :data:`ENV_VARS`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        for name, target in ENV_VARS.items():
            if target == field_name and name in os.environ:
                return os.environ[name], field_name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {field: os.environ[name] for name, field in ENV_VARS.items() if name in os.environ}


class Settings(BaseSettings):
    """Everything the API reads; see the ``serve:`` section of ``configs/base.yaml`` for each value's meaning."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, case_sensitive=False)

    host: str
    port: int = Field(ge=0, le=65535)
    model_path: str | None
    base_model: str
    served_name: str | None
    models_dir: Path
    backend: Literal["auto", "torch", "onnx"]
    variant: str | None
    device: str | None
    max_seq_length: int | None = Field(ge=1)
    search: bool
    index_path: str | None  # a folder or a gs:// URL
    default_index_path: Path | None
    cache_dir: Path
    batch_size: int = Field(ge=1)
    encode_batch_size: int = Field(ge=1)
    max_batch_tokens: int | None = Field(ge=1)
    threads: int | None = Field(ge=1)
    workers: int | None = Field(ge=1)
    batch_wait_ms: float = Field(ge=0)
    queue_size: int = Field(ge=1)
    max_batch: int = Field(ge=1)
    max_chars: int = Field(ge=1)
    max_body_bytes: int = Field(ge=1024)
    body_timeout_s: float = Field(gt=0)
    max_k: int = Field(ge=1)
    api_key: SecretStr | None
    api_key_file: Path | None
    retry_after_s: int = Field(ge=1)
    shutdown_timeout_s: float = Field(ge=0)
    trim_interval_s: float | None = Field(gt=0)
    log_json: bool
    log_level: str
    access_log: bool

    @field_validator(
        "model_path",
        "served_name",
        "variant",
        "device",
        "index_path",
        "api_key",
        "api_key_file",
        "max_batch_tokens",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip() in ("", "null", "None") else value

    @field_validator("log_level", mode="after")
    @classmethod
    def _known_level(cls, value: str) -> str:
        levels = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
        if value.upper() not in levels:
            raise ValueError(f"unknown log level {value!r}; choose one of {', '.join(levels)}")
        return value.upper()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_batch > self.queue_size:
            raise ValueError(
                f"max_batch ({self.max_batch}) is larger than queue_size ({self.queue_size}), so a full request could "
                "never be queued; raise serve.queue_size or lower serve.max_batch"
            )
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set either api_key (API_KEY) or api_key_file (API_KEY_FILE), not both")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _CloudRunEnvSource(settings_cls), env_settings, _ConfigSource(settings_cls))

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, overrides: Sequence[str] = (), **values: Any) -> Settings:
        """Compose ``configs/serve.yaml`` with Hydra ``overrides``, apply the environment, then ``values``.

        Raises :class:`ConfigError` naming each bad key, its config path and its environment variable.
        """
        cfg = compose("serve", overrides)
        section = to_plain(cfg.serve)
        section["default_index_path"] = _default_index_path(cfg)
        with _using(section):
            try:
                return cls(**values)
            except ValidationError as err:
                raise ConfigError(_describe(err)) from None

    def resolved_api_key(self) -> str | None:
        """The API key from ``api_key`` or the file ``api_key_file`` (a mounted secret); None = no auth."""
        if self.api_key is not None:
            key = self.api_key.get_secret_value().strip()
            return key or None
        if self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise ConfigError(
                    f"serve.api_key_file: cannot read the API key file {self.api_key_file} ({err.strerror}); mount "
                    "the secret there or unset API_KEY_FILE."
                ) from None
            if not key:
                raise ConfigError(f"serve.api_key_file: {self.api_key_file} is empty; write the key into it.")
            return key
        return None


@contextmanager
def _using(values: dict[str, Any]) -> Iterator[None]:
    token = _config_values.set(values)
    try:
        yield
    finally:
        _config_values.reset(token)


def _default_index_path(cfg: Any) -> str | None:
    """The folder the index stage writes for this config (``index_dir``), or None without an index section."""
    if "index" not in cfg:
        return None
    try:
        from arxiv_embeddings.index.format import index_dir
    except ImportError:
        return None
    return str(index_dir(cfg))


def _env_names(field: str) -> str:
    names = [f"{ENV_PREFIX}{field.upper()}", *(n for n, f in ENV_VARS.items() if f == field)]
    return " or ".join(names)


def _describe(err: ValidationError) -> str:
    problems = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"])
        if field:
            where = f"serve.{field} (env {_env_names(field)})"
            shown = "<hidden>" if field == "api_key" else repr(e.get("input"))
            problems.append(f"{where}={shown}: {e['msg']}")
        else:
            problems.append(f"serve: {e['msg'].removeprefix('Value error, ')}")
    return "Invalid serving settings: " + "; ".join(problems) + "."
