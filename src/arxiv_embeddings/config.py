"""Hydra helpers: where the configs live, composing them, and validating them before any work."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
# In a source checkout the configs sit at the repository root; an installed wheel carries a copy inside the package.
CONFIG_DIR = next(
    (p for p in (PACKAGE_DIR.parent.parent / "configs", PACKAGE_DIR / "configs") if (p / "preprocess.yaml").exists()),
    PACKAGE_DIR.parent.parent / "configs",
)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key and the fix."""


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose an entry config (``preprocess``, ``pairs``, ...) with Hydra overrides, outside ``@hydra.main``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def check_missing(cfg: DictConfig) -> None:
    """Fail if any required value (``???``) was left unset, naming every such key."""
    missing = sorted(_missing_keys(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        keys = ", ".join(missing)
        raise ConfigError(f"Required config value(s) not set: {keys}. Pass them as overrides, e.g. '{missing[0]}=...'.")


def _missing_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys whose value is ``???``, found without resolving interpolations (``OmegaConf.missing_keys``
    raises instead when another value interpolates a missing one, e.g. ``gs://${paths.bucket}``)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = f"{prefix}{key}" if isinstance(node, dict) else f"{prefix.rstrip('.')}[{key}]"
        if value == "???":
            yield name
        else:
            yield from _missing_keys(value, f"{name}.")


def choose(key: str, value: str, registry: Mapping[str, T]) -> T:
    """Look ``value`` up in an explicit registry, failing with the list of valid names."""
    try:
        return registry[value]
    except KeyError:
        valid = ", ".join(sorted(registry))
        raise ConfigError(f"{key}={value!r} is not known; valid values: {valid}.") from None


def require(condition: bool, key: str, message: str) -> None:
    """Raise a :class:`ConfigError` about ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def require_in(key: str, value: Any, valid: Iterable[Any]) -> None:
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, valid))}.")


def require_model_name(value: Any, key: str) -> None:
    """Require a model at ``key``: a run name, a model folder or a Hub name (not empty, not null)."""
    require(bool(str(value or "").strip()), key, "is empty; pass a run name, a model folder or a Hub name.")


def require_http_url(value: Any, key: str) -> None:
    """Require an http(s) base URL of an API at ``key``."""
    require(
        str(value).startswith(("http://", "https://")),
        key,
        f"got {value!r}; give the API's base URL, an http(s) URL such as https://api.openai.com/v1.",
    )


def is_int(value: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: Any, key: str, minimum: int = 1, optional: bool = False) -> None:
    """Require an integer >= ``minimum`` (or null when ``optional``) at ``key``."""
    if optional and value is None:
        return
    allowed = f"an integer >= {minimum}" + (", or null" if optional else "")
    require(is_int(value) and value >= minimum, key, f"got {value!r}; expected {allowed}.")


def to_plain(cfg: DictConfig | Any) -> Any:
    """Resolved plain-Python copy of a config node (for JSON manifests and fingerprints)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
