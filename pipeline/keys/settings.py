"""Settings that choose and configure the key store (``config/settings.yaml``).

The file is YAML; the environment variable ``CARDPREP_SETTINGS`` names
another file.  Relative paths are resolved against the current directory
(the repository root in demos and tests).

Example:
    >>> s = parse_settings({"environment": "demo", "key_store": {"backend": "soft"}})
    >>> s.environment, s.key_store.backend, s.is_production
    (<Environment.DEMO: 'demo'>, <Backend.SOFT: 'soft'>, False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.yamlconf import safe_load

__all__ = [
    "DEFAULT_SETTINGS_PATH",
    "Backend",
    "Environment",
    "HmkSource",
    "KeyStoreSettings",
    "Settings",
    "load_settings",
    "parse_settings",
]

DEFAULT_SETTINGS_PATH = Path("config/settings.yaml")
SETTINGS_ENV = "CARDPREP_SETTINGS"


class Environment(Enum):
    """Where cardprep runs: demo keys and the soft store, or production."""

    DEMO = "demo"
    PRODUCTION = "production"


class Backend(Enum):
    """Key store backend."""

    SOFT = "soft"
    PKCS11 = "pkcs11"


class HmkSource(Enum):
    """How the soft store's HMK enters."""

    PASSPHRASE_FILE = "passphrase_file"  # noqa: S105 (demo only; a source name)
    COMPONENTS = "components"


@dataclass(frozen=True, slots=True)
class KeyStoreSettings:
    """``key_store:`` section."""

    backend: Backend = Backend.SOFT
    path: Path = Path("var/keys/keys.db")
    audit_path: Path = Path("var/keys/audit.jsonl")
    hmk_source: HmkSource = HmkSource.PASSPHRASE_FILE
    passphrase_file: Path | None = Path("config/demo/hmk-passphrase.txt")
    pkcs11: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole settings file (sections other modules read stay in ``raw``)."""

    environment: Environment
    key_store: KeyStoreSettings
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def is_production(self) -> bool:
        """True when ``environment: production``."""
        return self.environment is Environment.PRODUCTION


def _enum(cls: type[Any], value: Any, name: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ConfigError(name, f"{value!r} is not one of {allowed}") from None


def parse_settings(raw: dict[str, Any]) -> Settings:
    """Validate a settings mapping (as loaded from YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError("settings", f"expected a mapping, got {type(raw).__name__}")
    environment = _enum(Environment, raw.get("environment", "demo"), "environment")
    ks = raw.get("key_store") or {}
    if not isinstance(ks, dict):
        raise ConfigError("key_store", "expected a mapping")
    hmk = ks.get("hmk") or {}
    pkcs11 = ks.get("pkcs11") or {}
    if not isinstance(hmk, dict) or not isinstance(pkcs11, dict):
        raise ConfigError("key_store.hmk", "hmk and pkcs11 must be mappings")
    defaults = KeyStoreSettings()
    passphrase = hmk.get("passphrase_file", defaults.passphrase_file)
    key_store = KeyStoreSettings(
        backend=_enum(Backend, ks.get("backend", "soft"), "key_store.backend"),
        path=Path(ks.get("path", defaults.path)),
        audit_path=Path(ks.get("audit_path", defaults.audit_path)),
        hmk_source=_enum(
            HmkSource, hmk.get("source", defaults.hmk_source.value), "key_store.hmk.source"
        ),
        passphrase_file=Path(passphrase) if passphrase else None,
        pkcs11={str(k): str(v) for k, v in pkcs11.items()},
    )
    return Settings(environment=environment, key_store=key_store, raw=dict(raw))


def load_settings(path: Path | None = None) -> Settings:
    """Load ``path``, else ``$CARDPREP_SETTINGS``, else ``config/settings.yaml``."""
    chosen = path or Path(os.environ.get(SETTINGS_ENV, str(DEFAULT_SETTINGS_PATH)))
    try:
        raw = safe_load(chosen.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError("settings", f"cannot read {chosen} ({type(exc).__name__})") from None
    except yaml.YAMLError:
        raise ConfigError("settings", f"{chosen} is not valid YAML") from None
    return parse_settings(raw)
