"""TEST ONLY: a demo key store holding the public test keys of ``config/demo/keys.yaml``.

Every value imported here is a published test value (EMV / GlobalPlatform /
GB/T examples) or generated in this process for the demo; the store is marked
``test_only`` and protects nothing.  ``init_demo_store`` creates:

* the symmetric keys of ``keys.yaml`` (KEK mode ``D``: it only decrypts input
  fields; TKs mode ``N``; IMKs and KMC non-exportable);
* ``demo-pan-token`` (M7, AES-256) and ``demo-data`` (D0, AES-256), generated;
* the demo EMV PKI: ``demo-ca`` (RSA, test CA, RID A000000999 index 99) and
  ``demo-issuer-rsa`` (RSA-1408) with its CA certificate (format 02);
* the demo SM2 PKI: ``demo-sm2-ca`` and ``demo-sm2-issuer`` with a PBOC
  format-12 issuer certificate.

Example:
    >>> store = init_demo_store(tmp / "keys.db")                  # doctest: +SKIP
    >>> store.get("demo-imk-ac").kcv.hex().upper()                # doctest: +SKIP
    '08D7B4'
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from pipeline.crypto import sm2
from pipeline.crypto.demo_pki import DEMO_CA_INDEX, DEMO_RID, generate_demo_pki
from pipeline.crypto.kcv import kcv as compute_kcv
from pipeline.crypto.pboc_certs import build_pboc_issuer_certificate
from pipeline.crypto.rsa import private_key_to_der
from pipeline.errors import ConfigError, KeyStoreError
from pipeline.keys.model import (
    Exportability,
    IssuerCertificateRecord,
    KeyAlgorithm,
    KeyRole,
    KeyUsage,
)
from pipeline.keys.soft import SoftKeyStore, _utc_now
from pipeline.keys.store import KeyStore
from pipeline.yamlconf import safe_load

__all__ = [
    "DEFAULT_KEYS_YAML",
    "DEFAULT_PASSPHRASE_FILE",
    "DemoKey",
    "check_demo_store",
    "init_demo_store",
    "load_demo_keys",
]

DEFAULT_KEYS_YAML = Path("config/demo/keys.yaml")
DEFAULT_PASSPHRASE_FILE = Path("config/demo/hmk-passphrase.txt")
DEMO_SM2_RID = "A000000999"
DEMO_SM2_CA_INDEX = "98"
DEMO_EXPIRY = "1230"

#: (usage, owner kind) -> (role, exportability, mode of use)
_ROLES: dict[tuple[str, str], tuple[KeyRole, Exportability, str]] = {
    ("K0", "issuer"): (KeyRole.KEK, Exportability.E, "D"),
    ("K0", "bureau"): (KeyRole.TK, Exportability.E, "N"),
    ("K1", "issuer"): (KeyRole.KBPK, Exportability.N, "N"),
    ("K1", "bureau"): (KeyRole.KBPK, Exportability.N, "N"),
    ("E0", "issuer"): (KeyRole.IMK_AC, Exportability.N, "X"),
    ("E1", "issuer"): (KeyRole.IMK_SMC, Exportability.N, "X"),
    ("E2", "issuer"): (KeyRole.IMK_SMI, Exportability.N, "X"),
    ("E5", "issuer"): (KeyRole.KMC, Exportability.N, "X"),
}


@dataclass(frozen=True, slots=True)
class DemoKey:
    """One entry of ``keys.yaml`` (the value is a public TEST value)."""

    label: str
    owner: str
    usage: KeyUsage
    algorithm: KeyAlgorithm
    value: bytes


def load_demo_keys(keys_yaml: Path = DEFAULT_KEYS_YAML) -> list[DemoKey]:
    """Parse ``keys.yaml``; refuse a file without ``test_only: true``."""
    try:
        raw: Any = safe_load(Path(keys_yaml).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("keys_yaml", f"cannot read {keys_yaml} ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or raw.get("test_only") is not True:
        raise ConfigError("test_only", f"{keys_yaml} must declare test_only: true")
    keys: list[DemoKey] = []
    for index, item in enumerate(raw.get("keys") or []):
        try:
            value = bytes.fromhex(str(item["value"]))
            keys.append(
                DemoKey(
                    label=str(item["label"]),
                    owner=str(item["owner"]),
                    usage=KeyUsage(str(item["usage"])),
                    algorithm=KeyAlgorithm.from_config(str(item["algorithm"]), len(value)),
                    value=value,
                )
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"keys[{index}]", f"invalid entry ({type(exc).__name__})") from None
    return keys


def init_demo_store(
    path: Path,
    keys_yaml: Path = DEFAULT_KEYS_YAML,
    *,
    passphrase_file: Path = DEFAULT_PASSPHRASE_FILE,
    audit_path: Path | None = None,
    actor: str = "demo-init",
    clock: Callable[[], datetime] = _utc_now,
    ca_bits: int = 1984,
    issuer_bits: int = 1408,
    with_pki: bool = True,
) -> SoftKeyStore:
    """TEST ONLY: create a demo store at ``path`` with the TEST keys and the demo PKIs."""
    demo_keys = load_demo_keys(keys_yaml)
    store = SoftKeyStore.open_with_passphrase(
        path, passphrase_file, create=True, actor=actor, audit_path=audit_path, clock=clock,
        test_only=True,
    )  # fmt: skip
    try:
        for key in demo_keys:
            kind = key.owner.split(":", 1)[0]
            role, exportability, mode = _ROLES.get(
                (key.usage.value, kind), (KeyRole.DATA, Exportability.N, "N")
            )
            store.import_test_key(
                key.label, key.algorithm, key.usage, role, key.owner, key.value,
                actor=actor, exportability=exportability, mode_of_use=mode,
            )  # fmt: skip
        store.generate(
            "demo-pan-token", KeyAlgorithm.AES256, KeyUsage.M7, KeyRole.PAN_TOKEN,
            "bureau:demo", actor=actor, exportability=Exportability.N, mode_of_use="G",
        )  # fmt: skip
        store.generate(
            "demo-data", KeyAlgorithm.AES256, KeyUsage.D0, KeyRole.DATA, "bureau:demo",
            actor=actor, exportability=Exportability.N, mode_of_use="B",
        )  # fmt: skip
        if with_pki:
            _add_emv_pki(store, actor, ca_bits, issuer_bits)
            _add_sm2_pki(store, actor)
    except BaseException:
        store.close()
        raise
    return store


def check_demo_store(store: KeyStore, keys_yaml: Path = DEFAULT_KEYS_YAML) -> None:
    """TEST ONLY: refuse a demo store built from other TEST keys than ``keys_yaml`` (ConfigError).

    The demo reuses the store it finds; the sample file it writes encrypts
    the cards' secret fields under ``keys_yaml``'s KEK.  A store made from an
    earlier ``keys.yaml`` would reject every card as undecryptable (R071), so
    each entry's KCV (not a secret: manifests carry them) is compared with the
    store's record of that label first.

    Example:
        >>> check_demo_store(store)  # doctest: +SKIP
    """
    stale: list[str] = []
    for key in load_demo_keys(keys_yaml):
        try:
            record = store.get(store.active(key.label))
        except KeyStoreError:
            stale.append(f"{key.label} missing")
            continue
        expected = compute_kcv(key.value, record.kcv_method, len(record.kcv))
        if expected != record.kcv:
            stale.append(f"{key.label} KCV {record.kcv.hex().upper()}, "
                         f"{Path(keys_yaml).name} gives {expected.hex().upper()}")  # fmt: skip
    if stale:
        raise ConfigError(
            "key_store",
            f"the demo store was built from other TEST keys than {keys_yaml} ("
            + "; ".join(stale)
            + "): move the store and its audit trail away so the demo builds a new one",
        )


def _add_emv_pki(store: SoftKeyStore, actor: str, ca_bits: int, issuer_bits: int) -> None:
    pki = generate_demo_pki(
        ca_bits=ca_bits, issuer_bits=issuer_bits, issuer_identifier="47617", expiry=DEMO_EXPIRY
    )
    store.import_test_key(
        "demo-ca", KeyAlgorithm.RSA, KeyUsage.S0, KeyRole.CA_SIGNING, "bureau:demo-ca",
        private_key_to_der(pki.ca_key), actor=actor, mode_of_use="S",
    )  # fmt: skip
    issuer = store.import_test_key(
        "demo-issuer-rsa", KeyAlgorithm.RSA, KeyUsage.S0, KeyRole.ISSUER_SIGNING, "issuer:demo",
        private_key_to_der(pki.issuer_key), actor=actor, mode_of_use="S",
    )  # fmt: skip
    store.set_issuer_certificate(
        issuer.ref,
        IssuerCertificateRecord(
            certificate=pki.issuer_certificate,
            remainder=pki.issuer_remainder,
            exponent=pki.issuer_exponent,
            ca_rid=DEMO_RID.hex().upper(),
            ca_index=DEMO_CA_INDEX.hex().upper(),
            expiry=pki.expiry,
            serial=pki.serial.hex().upper(),
            format="emv-02",
        ),
        actor=actor,
    )


def _add_sm2_pki(store: SoftKeyStore, actor: str) -> None:
    ca_d, _ = sm2.generate_keypair()
    store.import_test_key(
        "demo-sm2-ca", KeyAlgorithm.SM2, KeyUsage.S0, KeyRole.CA_SIGNING, "bureau:demo-ca",
        ca_d, actor=actor, mode_of_use="S",
    )  # fmt: skip
    issuer_d, issuer_pub = sm2.generate_keypair()
    issuer = store.import_test_key(
        "demo-sm2-issuer", KeyAlgorithm.SM2, KeyUsage.S0, KeyRole.ISSUER_SIGNING, "issuer:demo",
        issuer_d, actor=actor, mode_of_use="S",
    )  # fmt: skip
    serial = secrets.token_bytes(3)
    cert = build_pboc_issuer_certificate(ca_d, "623456", DEMO_EXPIRY, serial, issuer_pub)
    store.set_issuer_certificate(
        issuer.ref,
        IssuerCertificateRecord(
            certificate=cert,
            remainder=b"",
            exponent=b"",
            ca_rid=DEMO_SM2_RID,
            ca_index=DEMO_SM2_CA_INDEX,
            expiry=DEMO_EXPIRY,
            serial=serial.hex().upper(),
            format="pboc-12",
        ),
        actor=actor,
    )
