"""HMK entry (components / demo passphrase) and the KDF helpers it relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.kdf import hkdf_sha256, hmac_sha256, scrypt_key
from pipeline.errors import CeremonyError, ConfigError, KeyStoreError
from pipeline.keys.hmk import (
    check_hmk,
    hmk_from_components,
    hmk_from_passphrase,
    hmk_from_passphrase_file,
    hmk_kcv,
)
from pipeline.keys.soft import SoftKeyStore
from tests.conftest import load_vectors

VECTORS: list[dict[str, Any]] = load_vectors("kdf")


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_kdf_known_answers(vector: dict[str, Any]) -> None:
    """RFC 7914 / RFC 5869 / RFC 4231 vectors (tests/vectors/kdf.json)."""
    i = vector["inputs"]
    if vector["kdf"] == "scrypt":
        out = scrypt_key(i["passphrase"].encode(), i["salt"].encode(), i["length"],
                         n=i["n"], r=i["r"], p=i["p"])  # fmt: skip
    elif vector["kdf"] == "hkdf-sha256":
        out = hkdf_sha256(bytes.fromhex(i["ikm"]), bytes.fromhex(i["info"]), i["length"],
                          bytes.fromhex(i["salt"]))  # fmt: skip
    else:
        out = hmac_sha256(bytes.fromhex(i["key"]), bytes.fromhex(i["data"]))
    assert out.hex() == vector["expected"]


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.binary(min_size=32, max_size=32))  # fmt: skip
def test_components_xor_to_the_hmk(a: bytes, b: bytes, c: bytes) -> None:
    hmk = bytes(x ^ y ^ z for x, y, z in zip(a, b, c, strict=True))
    assert hmk_from_components([a, b, c], hmk_kcv(hmk)) == hmk
    assert hmk_from_components([a, bytes(x ^ y for x, y in zip(b, c, strict=True))],
                               hmk_kcv(hmk)[:3]) == hmk  # fmt: skip


def test_component_refusals() -> None:
    a, b = bytes(32), bytes([1]) * 32
    with pytest.raises(KeyStoreError, match=r"hmk: KCV mismatch: entered key has [0-9A-F]{10}"):
        hmk_from_components([a, b], b"\x00" * 5)
    with pytest.raises(CeremonyError, match="32 bytes each"):
        hmk_from_components([a, b[:16]], b"\x00" * 3)
    with pytest.raises(CeremonyError, match=r"2\.\.3"):
        hmk_from_components([a], b"\x00" * 3)
    with pytest.raises(KeyStoreError, match="must be 32 bytes"):
        check_hmk(bytes(16), b"\x00" * 3)


def test_passphrase_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw.txt"
    pw.write_bytes(b"correct horse battery staple\n")
    salt = bytes(range(16))
    hmk = hmk_from_passphrase_file(pw, salt)
    assert hmk == scrypt_key(b"correct horse battery staple", salt, 32)
    assert hmk != hmk_from_passphrase_file(pw, bytes(16))
    with pytest.raises(ConfigError, match="at least 12"):
        hmk_from_passphrase(b"short", salt)
    with pytest.raises(ConfigError, match="salt"):
        hmk_from_passphrase(b"long enough passphrase", b"x")
    with pytest.raises(ConfigError, match="cannot read"):
        hmk_from_passphrase_file(tmp_path / "missing", salt)


def test_passphrase_store_reopens_with_its_salt(tmp_path: Path) -> None:
    pw = tmp_path / "pw.txt"
    pw.write_text("demo passphrase for tests\n")
    db = tmp_path / "k.db"
    SoftKeyStore.open_with_passphrase(db, pw, create=True).close()
    SoftKeyStore.open_with_passphrase(db, pw).close()
    pw.write_text("another passphrase, wrong\n")
    with pytest.raises(KeyStoreError, match="hmk: KCV mismatch"):
        SoftKeyStore.open_with_passphrase(db, pw)
