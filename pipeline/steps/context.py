"""Batch settings shared by the steps: storage root, shard sizes, key labels.

The steps read two optional sections of ``config/settings.yaml`` (the file
:mod:`pipeline.keys.settings` loads; other sections stay in ``Settings.raw``)::

    storage:
      root: var/demo            # default var/<environment>
      inbound: var/demo/inbound # optional; default: each issuer's `inbound`
    batch:
      shard_size: 1000          # valid records per shard (prepare task)
      segment_size: 1000        # valid records per sealed staging file
      chunk_size: 256           # records per process-pool task
      workers: null             # default os.cpu_count()
      data_key: demo-data       # D0 key sealing card data and staging at rest
      manifest_key: demo-tk     # key the manifest MAC is derived from (K0 TK)
      pan_token_key: demo-pan-token
      actor: cardprep-batch     # service id in audit events
      lock_wait: 0              # seconds a run waits for another run of the same file
      shard_lock_wait: 600

and, when present, ``config/bureaus/<bureau>.yaml`` (``data_key``,
``manifest_key``, ``pan_token_key`` for that bureau override ``batch``).

Example:
    >>> from pipeline.keys.settings import parse_settings
    >>> bs = batch_settings(parse_settings({"environment": "demo"}))
    >>> str(bs.storage_root), bs.shard_size, bs.data_key
    ('var/demo', 1000, 'demo-data')
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.io.paths import BatchPaths
from pipeline.keys import open_store
from pipeline.keys.settings import Settings
from pipeline.keys.store import KeyStore
from pipeline.yamlconf import safe_load

__all__ = ["BatchSettings", "batch_paths", "batch_settings", "default_workers", "opened_store"]


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """The ``storage`` and ``batch`` sections, validated."""

    storage_root: Path
    inbound_root: Path | None = None
    config_dir: Path = Path("config")
    shard_size: int = 1000
    segment_size: int = 1000
    chunk_size: int = 256
    workers: int | None = None
    data_key: str = "demo-data"
    manifest_key: str = "demo-tk"
    pan_token_key: str = "demo-pan-token"  # noqa: S105 (a key label)
    actor: str = "cardprep-batch"
    lock_wait: float = 0.0
    shard_lock_wait: float = 600.0

    def paths(self, issuer: str, batch_id: str) -> BatchPaths:
        """The storage layout of one batch."""
        return BatchPaths(self.storage_root, issuer, batch_id)

    def inbound(self, issuer: str, default: Path) -> Path:
        """Where files for ``issuer`` land (``storage.inbound/<issuer>`` or the issuer's own)."""
        return self.inbound_root / issuer if self.inbound_root is not None else default

    def for_bureau(self, bureau: str) -> BatchSettings:
        """Apply ``config/bureaus/<bureau>.yaml`` key labels, when that file exists."""
        path = self.config_dir / "bureaus" / f"{bureau}.yaml"
        if not path.exists():
            return self
        try:
            raw = safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(str(path), f"unreadable ({type(exc).__name__})") from None
        if not isinstance(raw, dict):
            raise ConfigError(str(path), "expected a mapping")
        return replace(
            self,
            data_key=str(raw.get("data_key", self.data_key)),
            manifest_key=str(raw.get("manifest_key", self.manifest_key)),
            pan_token_key=str(raw.get("pan_token_key", self.pan_token_key)),
        )


def _positive(section: Mapping[str, Any], name: str, default: int) -> int:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"batch.{name}", f"must be a positive integer, got {value!r}")
    return value


def _seconds(section: Mapping[str, Any], name: str, default: float) -> float:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"batch.{name}", f"must be a number of seconds >= 0, got {value!r}")
    return float(value)


def batch_settings(settings: Settings) -> BatchSettings:
    """Read and check the ``storage`` and ``batch`` sections of ``settings``."""
    storage = settings.raw.get("storage") or {}
    batch = settings.raw.get("batch") or {}
    if not isinstance(storage, dict) or not isinstance(batch, dict):
        raise ConfigError("storage/batch", "sections must be mappings")
    root = Path(str(storage.get("root", Path("var") / settings.environment.value)))
    inbound = storage.get("inbound")
    workers = batch.get("workers")
    if workers is not None:
        workers = _positive(batch, "workers", 1)
    defaults = BatchSettings(storage_root=root)
    return BatchSettings(
        storage_root=root,
        inbound_root=Path(str(inbound)) if inbound else None,
        config_dir=Path(str(settings.raw.get("config_dir", "config"))),
        shard_size=_positive(batch, "shard_size", defaults.shard_size),
        segment_size=_positive(batch, "segment_size", defaults.segment_size),
        chunk_size=_positive(batch, "chunk_size", defaults.chunk_size),
        workers=workers,
        data_key=str(batch.get("data_key", defaults.data_key)),
        manifest_key=str(batch.get("manifest_key", defaults.manifest_key)),
        pan_token_key=str(batch.get("pan_token_key", defaults.pan_token_key)),
        actor=str(batch.get("actor", defaults.actor)),
        lock_wait=_seconds(batch, "lock_wait", defaults.lock_wait),
        shard_lock_wait=_seconds(batch, "shard_lock_wait", defaults.shard_lock_wait),
    )


def batch_paths(batch_dir: str | Path) -> BatchPaths:
    """Rebuild :class:`BatchPaths` from a batch directory ``<root>/batches/<issuer>/<id>``."""
    base = Path(batch_dir)
    if base.parent.parent.name != "batches":
        raise ConfigError("batch_dir", f"{base} is not <root>/batches/<issuer>/<batch id>")
    return BatchPaths(base.parent.parent.parent, base.parent.name, base.name)


def default_workers(requested: int | None, bs: BatchSettings) -> int:
    """Workers for a shard: the request, else ``batch.workers``, else every core."""
    n = requested if requested is not None else bs.workers
    return max(1, n if n is not None else (os.cpu_count() or 1))


@contextmanager
def opened_store(settings: Settings, store: KeyStore | None) -> Iterator[KeyStore]:
    """Yield ``store`` if given (the caller closes it), else open one and close it after."""
    if store is not None:
        yield store
        return
    own = open_store(settings)
    try:
        yield own
    finally:
        own.close()
