"""open_store(settings, secret=...): the store's log-in secret handed over by the caller.

The Airflow hook (issue 6 "Secrets and logs") passes the Connection
``cardprep_keystore`` password here: the soft store's demo passphrase, or
the PKCS#11 PIN.  No published vector exists for "same store through two
entry points"; the test cross-checks the secret path against the file path
(the same passphrase in a file opens the same store, with the same HMK KCV
and key KCVs).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError, KeyStoreError
from pipeline.keys import KeyAlgorithm, KeyRole, KeyUsage, open_store
from pipeline.keys import pkcs11 as pkcs11_module
from pipeline.keys.settings import Settings, parse_settings
from pipeline.keys.soft import SoftKeyStore


def _settings(root: Path, passphrase_file: Path | None, backend: str = "soft") -> Settings:
    return parse_settings({
        "environment": "demo",
        "key_store": {
            "backend": backend,
            "path": str(root / "keys.db"),
            "audit_path": str(root / "audit.jsonl"),
            "hmk": {"source": "passphrase_file",
                    "passphrase_file": str(passphrase_file) if passphrase_file else None},
            "pkcs11": {"module": "/nonexistent/libpkcs11.so", "token_label": "t"},
        },
    })  # fmt: skip


@pytest.fixture
def secret() -> bytes:
    return secrets.token_urlsafe(24).encode()


def test_a_secret_opens_the_same_store_as_the_same_passphrase_in_a_file(
    tmp_path: Path, secret: bytes
) -> None:
    no_file = _settings(tmp_path, None)
    with SoftKeyStore.from_settings(no_file, create=True, passphrase=secret) as store:
        # any key: its KCV proves the HMK unwraps it
        record = store.generate("t-key", KeyAlgorithm.AES128, KeyUsage.K0, KeyRole.TK,
                                "issuer:demo", actor="test")  # fmt: skip
        kcv = store.kcv(record.ref)
    with open_store(no_file, secret=secret) as by_secret:
        assert by_secret.kcv(by_secret.active("t-key")) == kcv
    file = tmp_path / "passphrase.txt"
    file.write_bytes(secret + b"\n")
    with open_store(_settings(tmp_path, file)) as by_file:
        assert by_file.kcv(by_file.active("t-key")) == kcv
    assert secret.decode() not in repr(by_file)


def test_a_wrong_or_missing_secret_is_refused_without_echoing_it(
    tmp_path: Path, secret: bytes
) -> None:
    settings = _settings(tmp_path, None)
    SoftKeyStore.from_settings(settings, create=True, passphrase=secret).close()
    wrong = secrets.token_urlsafe(24).encode()
    with pytest.raises(KeyStoreError, match="hmk") as info:
        open_store(settings, secret=wrong)
    assert wrong.decode() not in str(info.value) and secret.decode() not in str(info.value)
    with pytest.raises(KeyStoreError, match=r"key_store\.hmk\.passphrase_file"):
        open_store(settings)
    with pytest.raises(ConfigError, match="passphrase") as short:
        open_store(settings, secret=b"1234")
    assert "1234" not in str(short.value)
    with pytest.raises(ConfigError, match="secret"):
        open_store(settings, secret=secret, passphrase=secret)


def test_for_pkcs11_the_secret_is_the_pin_as_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_from_settings(settings: Settings, **options: Any) -> str:
        seen.update(options)
        return "opened"

    monkeypatch.setattr(
        pkcs11_module.Pkcs11KeyStore, "from_settings", staticmethod(fake_from_settings)
    )
    settings = _settings(tmp_path, None, backend="pkcs11")
    assert open_store(settings, secret=b"246810") == "opened"
    assert seen == {"pin": "246810"}
    with pytest.raises(ConfigError, match="UTF-8") as info:
        open_store(settings, secret=b"\xff\xfe")
    assert "\\xff" not in str(info.value)
