"""Fixtures for the prepare-step golden check and A/B timing (issue 7; run by hand).

Not collected by pytest (``tests/bench`` is in ``norecursedirs``).  Both
``golden_prepare.py`` and ``ab_prepare.py`` use it:

* :func:`fixture_dir` builds, once, a demo key store, an RSA-1152 e=3 ICC key
  pool under ``demo-tk`` and a list of RSA-1152 ICC keys for the inline
  product (the demo issuer keys are generated at random, so the store is made
  once and reused; every run works on a fresh copy of it);
* :func:`pinned_randomness` replaces ``secrets.token_bytes`` /
  ``secrets.randbelow`` (ICC certificate serial, SM2 key pair and nonce, RSA
  blinding, AES-GCM nonce of the sealed card) with a seeded generator and
  ``rsa.generate_rsa_key`` with the fixture keys, so a run is reproducible
  byte for byte as long as the code draws the same values in the same order;
* :func:`rsa_records` / :func:`sm2_records`: cards of both demo products with
  PSN / no PSN, effective date / none, KDD / none, PIN block, CVV, iCVV, and a
  few that must be rejected (a PIN block or a CVV under the wrong key).
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pipeline.crypto import rsa
from pipeline.crypto.ciphers import Algorithm, BlockCipher
from pipeline.crypto.padding import pad_iso9797_m2
from pipeline.keys.demo import init_demo_store
from pipeline.keys.pool import KeyPool, PoolSpec, fill
from pipeline.keys.settings import Settings, parse_settings
from pipeline.keys.soft import SoftKeyStore
from pipeline.records.luhn import luhn_check_digit
from pipeline.records.validate import CardRecord

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
PASSPHRASE = CONFIG / "demo" / "hmk-passphrase.txt"
DEMO_KEYS = {k["label"]: bytes.fromhex(str(k["value"])) for k in yaml.safe_load(
    (CONFIG / "demo" / "keys.yaml").read_text())["keys"]}  # fmt: skip
KEK = BlockCipher(Algorithm.TDES, DEMO_KEYS["demo-kek"])
WRONG = BlockCipher(Algorithm.TDES, bytes(range(1, 17)))
RSA_POOL_PRODUCT = "demo-visa-rsa"  # switched to icc_key.source: pool in the fixture config
#: card index -> fields that make ``prepare`` reject it (a format reason, not the store's)
BAD_FIELDS: dict[int, dict[str, str]] = {
    5: {"name": "DO\u00c9/JOHN"},
    11: {"name": "A"},
    14: {"discretionary": "1234567890123"},  # track 2 of 20 bytes
    20: {"expiry": "2813"},
    26: {"service_code": "2A1"},
    41: {"psn": "1"},
}


def luhn_pan(body: str) -> str:
    """``body`` followed by its Luhn check digit (ISO/IEC 7812-1 Annex B)."""
    return body + luhn_check_digit(body)


def _format0(pin: str, pan: str) -> bytes:
    pan_field = int("0000" + pan[-13:-1], 16)
    return (int(f"{len(pin):02d}{pin}".ljust(16, "F"), 16) ^ pan_field).to_bytes(8, "big")


def rsa_records(count: int, first_line: int = 2, *, rejects: bool = True) -> list[CardRecord]:
    """``count`` demo-visa-rsa cards; a few rejected (wrong-key PIN/CVV, :data:`BAD_FIELDS`)."""
    out = []
    for i in range(count):
        long_pan = i % 3 == 2
        pan = luhn_pan(f"476174{i:012d}") if long_pan else luhn_pan(f"476173{i:09d}")
        secret = {
            "cvv": KEK.encrypt_ecb(pad_iso9797_m2(f"{i % 1000:03d}".encode(), 8)),
            "icvv": KEK.encrypt_ecb(pad_iso9797_m2(f"{(i * 7) % 1000:03d}".encode(), 8)),
        }
        if i % 2 == 0:
            pin_cipher = WRONG if rejects and i % 17 == 16 else KEK
            secret["pin_block"] = pin_cipher.encrypt_ecb(_format0(f"{1000 + i % 9000}", pan))
        if rejects and i % 23 == 22:
            secret["cvv"] = WRONG.encrypt_ecb(pad_iso9797_m2(b"123", 8))  # R071
        out.append(
            CardRecord(
                line_no=first_line + i,
                product="demo-visa-rsa",
                pan=pan,
                psn=None if i % 5 == 4 else f"{i % 100:02d}",
                expiry="2812",
                effective=None if i % 4 == 3 else "2301",
                service_code=("201", "221", "101")[i % 3],
                name=("DOE/JOHN", "O'NEIL/ANN-MARIE", "SMITH/J")[i % 3],
                discretionary="" if i % 6 == 5 else f"{i:04d}",
                kdd=bytes([i % 256]) * 10 if i % 3 != 1 else None,
                secrets=secret,
                extra={"customer_ref": f"C{i:06d}"},
            )
        )
        if rejects and i in BAD_FIELDS:
            out[-1] = dataclasses.replace(out[-1], **BAD_FIELDS[i])
    return out


def sm2_records(count: int, first_line: int = 2, *, rejects: bool = True) -> list[CardRecord]:
    """``count`` demo-pboc-sm2 cards; a CVV on every 4th (not shipped: only checked)."""
    out = []
    for i in range(count):
        secret: dict[str, bytes] = {}
        if i % 4 == 1:
            secret["cvv"] = KEK.encrypt_ecb(pad_iso9797_m2(f"{i % 1000:03d}".encode(), 8))
        if rejects and i % 29 == 28:
            secret["cvv"] = WRONG.encrypt_ecb(pad_iso9797_m2(b"123", 8))  # R071
        out.append(
            CardRecord(
                line_no=first_line + i,
                product="demo-pboc-sm2",
                pan=luhn_pan(f"623456{i:012d}"),
                psn=None if i % 5 == 4 else "00",
                expiry="2812",
                effective=None if i % 4 == 3 else "2301",
                service_code=("220", "620")[i % 2],
                name="DOE/JOHN",
                discretionary="0000",
                kdd=None,
                secrets=secret,
                extra={},
            )
        )
    return out


def fixture_dir(path: Path, pool_keys: int = 64, rsa_keys: int = 64) -> Path:
    """Build (once) the store, the RSA pool, the inline RSA keys and the pool config in ``path``."""
    done = path / "ready"
    if done.exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    store = init_demo_store(
        path / "keys.db", CONFIG / "demo" / "keys.yaml",
        passphrase_file=PASSPHRASE, audit_path=path / "audit.jsonl",
    )  # fmt: skip
    try:
        with KeyPool(path / "keypool.db") as pool:
            fill(store, pool, PoolSpec.of("rsa", 1152, 3), store.active("demo-tk"), pool_keys,
                 actor="ops", workers=1)  # fmt: skip
    finally:
        store.close()
    keys = path / "rsa-keys"
    keys.mkdir(exist_ok=True)
    for i in range(rsa_keys):
        (keys / f"{i:04d}.der").write_bytes(rsa.private_key_to_der(rsa.generate_rsa_key(1152, 3)))
    cfg = path / "config"
    shutil.copytree(CONFIG, cfg)
    product_file = cfg / "products" / f"{RSA_POOL_PRODUCT}.yaml"
    product = yaml.safe_load(product_file.read_text())
    product["icc_key"]["source"] = "pool"
    product["icc_key"]["pool_empty"] = "fail"
    product_file.write_text(yaml.safe_dump(product))
    done.write_text("ok\n")
    return path


@contextmanager
def working_copy(fixture: Path) -> Iterator[tuple[Path, SoftKeyStore, Settings]]:
    """A fresh copy of the fixture store and pool: (dir, opened store, settings)."""
    with tempfile.TemporaryDirectory(prefix="cardprep-golden-") as tmp:
        work = Path(tmp)
        for name in ("keys.db", "audit.jsonl", "keypool.db"):
            shutil.copy2(fixture / name, work / name)
        settings = parse_settings({
            "environment": "demo", "config_dir": str(fixture / "config"),
            "key_store": {"backend": "soft", "path": str(work / "keys.db"),
                          "audit_path": str(work / "audit.jsonl"),
                          "hmk": {"source": "passphrase_file",
                                  "passphrase_file": str(PASSPHRASE)}},
            "storage": {"root": str(work / "var"), "inbound": str(work / "inbound")},
        })  # fmt: skip
        store = SoftKeyStore.open_with_passphrase(
            work / "keys.db", PASSPHRASE, audit_path=work / "audit.jsonl"
        )
        try:
            yield work, store, settings
        finally:
            store.close()


@contextmanager
def pinned_randomness(fixture: Path, seed: int) -> Iterator[None]:
    """``secrets`` and RSA key generation made reproducible (see the module docstring)."""
    rng = random.Random(seed)  # reproducible on purpose (a golden check)
    keys = [rsa.private_key_from_der(p.read_bytes())
            for p in sorted((fixture / "rsa-keys").glob("*.der"))]  # fmt: skip
    saved: dict[str, Any] = {
        "token_bytes": secrets.token_bytes,
        "randbelow": secrets.randbelow,
        "generate_rsa_key": rsa.generate_rsa_key,
    }
    counter = iter(range(10**9))

    def next_key(bits: int, exponent: int) -> rsa.RsaPrivateKey:
        key = keys[next(counter) % len(keys)]
        assert key.size_bytes * 8 == bits and key.e == exponent
        return key

    secrets.token_bytes = rng.randbytes  # type: ignore[assignment]
    secrets.randbelow = rng.randrange  # type: ignore[assignment]
    rsa.generate_rsa_key = next_key  # type: ignore[assignment]
    try:
        yield
    finally:
        secrets.token_bytes = saved["token_bytes"]
        secrets.randbelow = saved["randbelow"]
        rsa.generate_rsa_key = saved["generate_rsa_key"]
