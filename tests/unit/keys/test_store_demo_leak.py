"""init_demo_store from config/demo/keys.yaml, and a leak scan of everything the store writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.crypto import pboc_certs, sm2
from pipeline.crypto.emv_certs import verify_issuer_certificate
from pipeline.crypto.kcv import kcv
from pipeline.errors import KeyStoreError
from pipeline.keys.demo import init_demo_store, load_demo_keys
from pipeline.keys.model import DerivationMethod, KeyAlgorithm, KeyRef, KeyRole, KeyUsage
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import new_store

KEYS_YAML = Path(__file__).resolve().parents[3] / "config/demo/keys.yaml"
PASSPHRASE = Path(__file__).resolve().parents[3] / "config/demo/hmk-passphrase.txt"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> SoftKeyStore:
    path = tmp_path_factory.mktemp("demo") / "keys.db"
    return init_demo_store(path, KEYS_YAML, passphrase_file=PASSPHRASE, ca_bits=1152,
                           issuer_bits=1024)  # fmt: skip


def test_demo_store_has_every_yaml_key_with_its_kcv(demo: SoftKeyStore) -> None:
    for key in load_demo_keys(KEYS_YAML):
        record = demo.get(key.label)
        method = "sm4" if key.algorithm is KeyAlgorithm.SM4 else "tdes"
        assert record.kcv == kcv(key.value, method), key.label
        assert record.usage is key.usage and record.owner == key.owner
        assert demo.kcv(record.ref) == record.kcv
    assert demo.get("demo-imk-ac").kcv.hex().upper() == "08D7B4"
    assert demo.get("demo-kek").role is KeyRole.KEK and demo.get("demo-tk").role is KeyRole.TK
    assert demo.audit_trail.verify().ok


def test_demo_pki_certificates_verify(demo: SoftKeyStore) -> None:
    ca, issuer = demo.get("demo-ca"), demo.get("demo-issuer-rsa")
    cert = issuer.certificate
    assert cert is not None and ca.public_key and ca.public_exponent and issuer.public_key
    recovered = verify_issuer_certificate(
        cert.certificate, ca.public_key, ca.public_exponent, cert.remainder, cert.exponent
    )
    assert recovered is not None
    sm2_ca, sm2_issuer = demo.get("demo-sm2-ca"), demo.get("demo-sm2-issuer")
    assert sm2_issuer.certificate is not None and sm2_ca.public_key is not None
    pboc_certs.verify_pboc_issuer_certificate(sm2_issuer.certificate.certificate, sm2_ca.public_key)
    signature = demo.sign(sm2_issuer.ref, b"ssad")
    assert sm2_issuer.public_key is not None
    sm2.verify(sm2_issuer.public_key, b"ssad", signature)


def test_demo_hot_path(demo: SoftKeyStore) -> None:
    wrapped = demo.derive_and_wrap(
        demo.active("demo-imk-ac"), "4761739001010119", "01", DerivationMethod.OPTION_A,
        demo.active("demo-tk"),
    )  # fmt: skip
    assert len(wrapped.ciphertext) == 16 and wrapped.wrapped_under == KeyRef("demo-tk", 1)
    assert len(demo.pan_token(demo.active("demo-pan-token"), "4761739001010119")) == 32


def test_clear_test_keys_refused_by_a_non_demo_store(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    with pytest.raises(KeyStoreError, match="test_only"):
        store.import_test_key("k", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, "bureau:demo",
                              bytes(16), actor="o")  # fmt: skip


def _files(store: SoftKeyStore) -> list[Path]:
    base = [store.path, store.audit_path, store.audit_trail.head_path]
    wal = [store.path.with_name(store.path.name + s) for s in ("-wal", "-shm")]
    return [p for p in base + wal if p.exists()]


def _leaks(blobs: list[bytes], secrets: list[bytes]) -> list[str]:
    found = []
    for secret in secrets:
        for needle in (secret, secret.hex().encode(), secret.hex().upper().encode()):
            if any(needle in blob for blob in blobs):
                found.append(secret.hex()[:6] + "...")
    return found


def test_no_key_bytes_in_db_or_audit(demo: SoftKeyStore, tmp_path: Path) -> None:
    """Scan the DB (+WAL), the audit trail and its head for every known key value."""
    secrets = [k.value for k in load_demo_keys(KEYS_YAML)]
    # components and a combined key entered by ceremony into a second store
    store = new_store(tmp_path)
    c1, c2 = bytes.fromhex("A1B2C3D4E5F60718293A4B5C6D7E8F90"), bytes.fromhex("0F" * 16)
    combined = bytes(x ^ y for x, y in zip(c1, c2, strict=True))
    rec = store.import_components(
        "kek", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.KEK, "issuer:demo", [c1, c2],
        kcv(combined), custodians=["a", "b"], actor="o",
    )  # fmt: skip
    store.retire(rec.ref, actor="o")
    for store_ in (demo, store):
        blobs = [p.read_bytes() for p in _files(store_)]
        assert blobs
        assert _leaks(blobs, [*secrets, c1, c2, combined]) == []
    # and the HMK itself never lands anywhere
    assert (
        _leaks(
            [p.read_bytes() for p in _files(store)],
            [bytes.fromhex("00112233445566778899AABBCCDDEEFF" * 2)],
        )
        == []
    )
    # the scanner itself finds a planted value (so this test can fail)
    assert _leaks([b"x" + combined.hex().upper().encode()], [combined]) != []
