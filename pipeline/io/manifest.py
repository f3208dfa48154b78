"""The batch manifest: canonical JSON, sealed with a MAC under a TK-derived key.

DESIGN.md step 5 and issue 5 "Output": the manifest is written *last* and is
the commit marker of a batch.  It lists the counts, the SHA-256 and size of
every file (the reports included), the label/version/KCV of every key used
and the profile versions;
its MAC is ``store.mac(key, canonical_json, purpose="manifest")`` (AES-CMAC
under a key the store derives from ``key`` for that purpose, so the TK itself
never MACs anything else).  docs/OUTPUT.md section "Manifest" is the contract.

Canonical form (what the MAC covers): the manifest object *without* its
``mac`` member, serialised as JSON with sorted keys, no whitespace, UTF-8 (the
same canonical form as the audit trail).  Floats are refused so that the
canonical form is stable across JSON implementations.

Example:
    >>> body = {"batch_id": "00ab12cd34ef5678", "counts": {"in": 2}}
    >>> canonical_manifest(body)
    b'{"batch_id":"00ab12cd34ef5678","counts":{"in":2}}'
    >>> canonical_manifest({**body, "mac": {"value": "00"}}) == canonical_manifest(body)
    True
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.audit.trail import canonical
from pipeline.errors import InvalidInputError, VerificationError
from pipeline.io.atomic import write_text_atomic
from pipeline.keys.model import KeyRef
from pipeline.keys.store import KeyStore

__all__ = [
    "LEGACY_MANIFEST_FORMAT",
    "MAC_ALGORITHM",
    "MANIFEST_FORMAT",
    "MANIFEST_PURPOSE",
    "ManifestMac",
    "canonical_manifest",
    "check_json_safe",
    "load_manifest",
    "seal_manifest",
    "verify_manifest_mac",
    "write_manifest",
]

#: Format 2: the reports are written before the manifest and listed in ``files``.
MANIFEST_FORMAT = "cardprep-manifest/2"
#: Format 1 (reports written after the manifest, outside it): still verifiable.
LEGACY_MANIFEST_FORMAT = "cardprep-manifest/1"
MANIFEST_PURPOSE = "manifest"
MAC_ALGORITHM = "AES-CMAC under HKDF-SHA256(key, 'cardprep/mac/manifest'), 16 bytes"
_MAC_FIELD = "mac"


@dataclass(frozen=True, slots=True)
class ManifestMac:
    """The ``mac`` member of a manifest: which key, its KCV, and the MAC value (hex)."""

    key: str
    kcv: str
    value: str
    purpose: str = MANIFEST_PURPOSE
    algorithm: str = MAC_ALGORITHM

    def to_json(self) -> dict[str, str]:
        """JSON form (``key`` is ``label@vN``, ``kcv`` and ``value`` upper-case hex)."""
        return {
            "algorithm": self.algorithm,
            "key": self.key,
            "kcv": self.kcv,
            "purpose": self.purpose,
            "value": self.value,
        }


def check_json_safe(obj: Any, where: str = "manifest") -> None:
    """Refuse values whose canonical JSON is not stable (floats, non-str keys, odd types).

    Example:
        >>> check_json_safe({"a": [1, "x", None, True]})
        >>> check_json_safe({"t": 1.5})
        Traceback (most recent call last):
        ...
        pipeline.errors.VerificationError: manifest.t: floats are not allowed (canonical JSON)
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | str):
        return
    if isinstance(obj, float):
        raise VerificationError(where, "floats are not allowed (canonical JSON)")
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise VerificationError(where, f"key {key!r} is not a string")
            check_json_safe(value, f"{where}.{key}")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            check_json_safe(value, f"{where}[{i}]")
        return
    raise VerificationError(where, f"{type(obj).__name__} is not a JSON value")


def canonical_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The bytes the MAC covers: canonical JSON of ``manifest`` without ``mac``."""
    body = {k: v for k, v in manifest.items() if k != _MAC_FIELD}
    check_json_safe(body)
    return canonical(body)


def seal_manifest(manifest: Mapping[str, Any], store: KeyStore, key: KeyRef) -> dict[str, Any]:
    """Return ``manifest`` with its ``mac`` member computed under ``key`` (usage K0/M6).

    The key's KCV is recorded beside the MAC so that a reader can check it is
    holding the same key before trusting a failed or passed check.
    """
    data = canonical_manifest(manifest)
    mac = store.mac(key, data, MANIFEST_PURPOSE)
    kcv = store.get(key).kcv.hex().upper()
    sealed = {k: v for k, v in manifest.items() if k != _MAC_FIELD}
    sealed[_MAC_FIELD] = ManifestMac(str(key), kcv, mac.hex().upper()).to_json()
    return sealed


def _mac_member(manifest: Mapping[str, Any], where: str) -> ManifestMac:
    raw = manifest.get(_MAC_FIELD)
    if not isinstance(raw, Mapping):
        raise VerificationError(f"{where} [mac]", "manifest has no mac member")
    try:
        return ManifestMac(
            key=str(raw["key"]),
            kcv=str(raw["kcv"]),
            value=str(raw["value"]),
            purpose=str(raw.get("purpose", MANIFEST_PURPOSE)),
            algorithm=str(raw.get("algorithm", MAC_ALGORITHM)),
        )
    except KeyError as exc:
        raise VerificationError(f"{where} [mac]", f"mac member lacks {exc.args[0]!r}") from None


def verify_manifest_mac(
    manifest: Mapping[str, Any], store: KeyStore, where: str = "manifest.json"
) -> KeyRef:
    """Check the manifest's MAC (and the MAC key's KCV) with ``store``; return the key ref.

    Raises :class:`~pipeline.errors.VerificationError` naming ``where`` and
    the check (``mac``, ``mac key kcv``) on any mismatch.
    """
    member = _mac_member(manifest, where)
    if member.purpose != MANIFEST_PURPOSE:
        raise VerificationError(f"{where} [mac]", f"purpose {member.purpose!r} is not 'manifest'")
    try:
        ref = KeyRef.parse(member.key)
    except InvalidInputError as exc:
        raise VerificationError(f"{where} [mac]", f"key {member.key!r} unreadable: {exc}") from None
    kcv = store.get(ref).kcv.hex().upper()
    if not hmac.compare_digest(kcv, member.kcv.upper()):
        raise VerificationError(
            f"{where} [mac key kcv]", f"{ref} has KCV {kcv}, manifest says {member.kcv}"
        )
    try:
        mac = bytes.fromhex(member.value)
    except ValueError:
        raise VerificationError(f"{where} [mac]", "MAC value is not hex") from None
    if not store.verify_mac(ref, canonical_manifest(manifest), mac, MANIFEST_PURPOSE):
        raise VerificationError(f"{where} [mac]", f"MAC under {ref} does not verify")
    return ref


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write the sealed manifest atomically (indented; the MAC covers the canonical form)."""
    check_json_safe(dict(manifest))
    write_text_atomic(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load_manifest(path: Path) -> dict[str, Any]:
    """Read a manifest; VerificationError naming the file when missing or not JSON."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VerificationError(
            f"{path} [manifest]", "missing: the batch is not published"
        ) from None
    except (OSError, ValueError) as exc:
        raise VerificationError(
            f"{path} [manifest]", f"unreadable ({type(exc).__name__})"
        ) from None
    if not isinstance(doc, dict):
        raise VerificationError(f"{path} [manifest]", "not a JSON object")
    return doc
