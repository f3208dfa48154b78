"""Issuer configuration, ``config/issuers/<issuer>.yaml``.

An issuer names its input layout, the label of its KEK in the key store, its
bureau, its inbound directory, and the BIN -> product table (any PAN prefix;
the longest matching prefix wins).  An optional ``sample`` section drives
``cardprep sample`` (see :mod:`pipeline.records.sample`).

Example:
    >>> cfg = load_issuer("demo")
    >>> cfg.product_for_pan("4761739001010119"), cfg.product_for_pan("5555555555554444")
    ('demo-visa-rsa', None)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.yamlconf import safe_load

__all__ = ["IssuerConfig", "load_issuer", "parse_issuer"]

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_BIN_RE = re.compile(r"^[0-9]{1,11}$")
_KEYS = {
    "id", "name", "layout", "kek", "kek_algorithm", "bureau", "retention_days",
    "inbound", "bins", "sample", "header_issuer_id",
}  # fmt: skip
_KEK_BLOCK = {"tdes": 8, "aes": 16, "sm4": 16}


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One issuer (see the module docstring)."""

    id: str
    name: str
    layout: str
    kek: str
    kek_algorithm: str
    bureau: str
    retention_days: int
    inbound: Path
    bins: Mapping[str, str]
    sample: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    _lengths: tuple[int, ...] = ()
    #: What the file header's ``issuer_id`` must say (None: not checked).
    header_issuer_id: str | None = None

    @property
    def kek_block_size(self) -> int:
        """Cipher block size of the KEK algorithm (8 for 3DES, 16 for AES / SM4)."""
        return _KEK_BLOCK[self.kek_algorithm]

    @property
    def products(self) -> frozenset[str]:
        """Every product id the BIN table can yield."""
        return frozenset(self.bins.values())

    def product_for_pan(self, pan: str) -> str | None:
        """Product of the longest BIN prefix of ``pan``, or ``None`` (reject R040).

        Example:
            >>> load_issuer("demo").product_for_pan("6234560000000000003")
            'demo-pboc-sm2'
        """
        bins = self.bins
        for n in self._lengths:
            product = bins.get(pan[:n])
            if product is not None:
                return product
        return None


def load_issuer(issuer_id: str, config_dir: Path = Path("config")) -> IssuerConfig:
    """Load and check ``<config_dir>/issuers/<issuer_id>.yaml``; ConfigError otherwise."""
    if not isinstance(issuer_id, str) or not _ID_RE.match(issuer_id):
        raise ConfigError("issuer", f"invalid issuer id {issuer_id!r}")
    path = Path(config_dir) / "issuers" / f"{issuer_id}.yaml"
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read issuer config: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"invalid YAML: {exc}") from exc
    cfg = parse_issuer(data, source=str(path))
    if cfg.id != issuer_id:
        raise ConfigError(f"{path}: id", f"is {cfg.id!r}, file is named {issuer_id!r}")
    return cfg


def _str(data: Mapping[str, Any], key: str, source: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {key}", f"must be a non-empty string, got {value!r}")
    return value


def parse_issuer(data: Any, source: str = "<issuer>") -> IssuerConfig:
    """Build an :class:`IssuerConfig` from parsed YAML, checking every rule."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, "issuer config must be a mapping")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(source, f"unknown key(s) {unknown}")
    issuer_id = _str(data, "id", source)
    if not _ID_RE.match(issuer_id):
        raise ConfigError(f"{source}: id", f"invalid issuer id {issuer_id!r}")
    kek_alg = data.get("kek_algorithm", "tdes")
    if kek_alg not in _KEK_BLOCK:
        raise ConfigError(f"{source}: kek_algorithm", f"one of {sorted(_KEK_BLOCK)}")
    retention = data.get("retention_days", 30)
    if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
        raise ConfigError(f"{source}: retention_days", "must be a positive integer")
    raw_bins = data.get("bins")
    if not isinstance(raw_bins, Mapping) or not raw_bins:
        raise ConfigError(f"{source}: bins", "must be a non-empty mapping BIN -> product")
    bins: dict[str, str] = {}
    for prefix, product in raw_bins.items():
        if not isinstance(prefix, str) or not _BIN_RE.match(prefix):
            raise ConfigError(f"{source}: bins", f"BIN {prefix!r} must be a quoted digit string")
        if not isinstance(product, str) or not _ID_RE.match(product):
            raise ConfigError(f"{source}: bins.{prefix}", f"invalid product id {product!r}")
        bins[prefix] = product
    sample = data.get("sample", {}) or {}
    if not isinstance(sample, Mapping):
        raise ConfigError(f"{source}: sample", "must be a mapping")
    header_id = data.get("header_issuer_id")
    if header_id is not None and (not isinstance(header_id, str) or not header_id.strip()):
        raise ConfigError(
            f"{source}: header_issuer_id", f"must be a non-empty string, got {header_id!r}"
        )
    return IssuerConfig(
        id=issuer_id,
        name=str(data.get("name", issuer_id)),
        layout=_str(data, "layout", source),
        kek=_str(data, "kek", source),
        kek_algorithm=kek_alg,
        bureau=_str(data, "bureau", source),
        retention_days=retention,
        inbound=Path(str(data.get("inbound", f"var/demo/inbound/{issuer_id}"))),
        bins=MappingProxyType(bins),
        sample=MappingProxyType(dict(sample)),
        source=source,
        _lengths=tuple(sorted({len(b) for b in bins}, reverse=True)),
        header_issuer_id=header_id,
    )
