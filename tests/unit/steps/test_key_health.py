"""pipeline.steps.key_health: KCV re-check of active keys and certificate expiry warnings.

No published vector exists for "days until an EMV certificate expires"; the
expected dates are computed independently with ``datetime`` (the first day
of the next month minus one day) and cross-checked on every month of a
century with hypothesis.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, KeyStoreError
from pipeline.keys.demo import init_demo_store
from pipeline.keys.model import KeyRecord, KeyRef, KeyState
from pipeline.keys.soft import SoftKeyStore
from pipeline.steps.key_health import certificate_expiry, check_keys, days_left, key_health

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> SoftKeyStore:
    path = tmp_path_factory.mktemp("kh") / "keys.db"
    return init_demo_store(
        path, REPO / "config/demo/keys.yaml",
        passphrase_file=REPO / "config/demo/hmk-passphrase.txt", ca_bits=1152, issuer_bits=1024,
    )  # fmt: skip


class _Skewed:
    """Delegates to a real store but reports a different KCV for one label, or refuses."""

    def __init__(self, store: SoftKeyStore, label: str, *, refuse: bool = False) -> None:
        self._store, self._label, self._refuse = store, label, refuse

    def list(self, owner: str | None = None) -> list[KeyRecord]:
        return self._store.list(owner)

    def kcv(self, ref: KeyRef) -> bytes:
        value = self._store.kcv(ref)
        if ref.label != self._label:
            return value
        if self._refuse:
            raise KeyStoreError(str(ref), "stored KCV does not match the key: refused")
        return bytes(b ^ 0xFF for b in value)


def _next_month_minus_one_day(month: int, year: int) -> date:
    first_next = date(year + month // 12, month % 12 + 1, 1)
    return first_next - timedelta(days=1)


@given(st.integers(1, 12), st.integers(0, 99))
@settings(max_examples=200)
def test_certificate_expiry_is_the_last_day_of_the_month(month: int, yy: int) -> None:
    mmyy = f"{month:02d}{yy:02d}"
    assert certificate_expiry(mmyy) == _next_month_minus_one_day(month, 2000 + yy)


def test_certificate_expiry_examples() -> None:
    assert certificate_expiry("0228") == date(2028, 2, 29)  # leap year
    assert certificate_expiry("0227") == date(2027, 2, 28)
    assert days_left("1230", date(2030, 12, 31)) == 0
    assert days_left("1230", date(2031, 1, 1)) == -1


@pytest.mark.parametrize("bad", ["", "123", "1330", "0030", "12a0", "12300"])
def test_certificate_expiry_rejects_malformed(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"certificate\.expiry"):
        certificate_expiry(bad)


def test_all_demo_keys_are_healthy_far_from_expiry(demo: SoftKeyStore) -> None:
    report = check_keys(demo, today=date(2027, 1, 1))
    assert report["healthy"] is True
    assert report["checked"] == len(report["kcv_ok"]) > 10
    assert report["kcv_failures"] == [] and report["expiring"] == [] and report["expired"] == []
    assert sorted(report["no_expiry_recorded"]) == ["demo-ca@v1", "demo-sm2-ca@v1"]
    tk = next(c for c in report["kcv_ok"] if c["key"] == "demo-tk@v1")
    assert tk["kcv"] == demo.get("demo-tk").kcv.hex().upper()


def test_issuer_certificates_expiring_within_90_days_are_warnings(demo: SoftKeyStore) -> None:
    report = key_health(demo, today=date(2030, 11, 1))  # demo certificates expire 12/30
    assert report["healthy"] is True
    assert {c["key"]: c["days_left"] for c in report["expiring"]} == {
        "demo-issuer-rsa@v1": 60, "demo-sm2-issuer@v1": 60,
    }  # fmt: skip
    assert len(check_keys(demo, today=date(2030, 10, 2))["expiring"]) == 2  # 90 days left
    assert check_keys(demo, today=date(2030, 10, 1))["expiring"] == []  # 91 days left
    assert len(check_keys(demo, today=date(2030, 10, 1), warn_days=91)["expiring"]) == 2


def test_expired_issuer_certificate_fails_the_task(demo: SoftKeyStore) -> None:
    report = check_keys(demo, today=date(2031, 1, 1))
    assert report["healthy"] is False and len(report["expired"]) == 2
    with pytest.raises(KeyStoreError, match=r"2 expired certificate\(s\): .*demo-issuer-rsa@v1"):
        key_health(demo, today=date(2031, 1, 1))
    assert key_health(demo, today=date(2031, 1, 1), fail=False)["healthy"] is False


@pytest.mark.parametrize("refuse", [False, True])
def test_kcv_mismatch_fails_and_names_the_key(demo: SoftKeyStore, refuse: bool) -> None:
    skewed: Any = _Skewed(demo, "demo-tk", refuse=refuse)
    report = check_keys(skewed, today=date(2027, 1, 1))
    assert [c["key"] for c in report["kcv_failures"]] == ["demo-tk@v1"]
    assert report["healthy"] is False
    with pytest.raises(KeyStoreError, match=r"1 KCV failure\(s\).*demo-tk@v1"):
        key_health(skewed, today=date(2027, 1, 1))


def test_only_active_keys_are_checked(demo: SoftKeyStore) -> None:
    suspended = replace(demo.get("demo-tk"), state=KeyState.SUSPENDED)

    class _WithSuspended(_Skewed):
        def list(self, owner: str | None = None) -> list[KeyRecord]:
            return [suspended if r.ref == suspended.ref else r for r in demo.list(owner)]

    store: Any = _WithSuspended(demo, "demo-tk")  # would fail the KCV if it were checked
    report = check_keys(store, today=date(2027, 1, 1))
    assert "demo-tk@v1" not in {c["key"] for c in report["kcv_ok"] + report["kcv_failures"]}
    assert report["healthy"] is True


def test_negative_warn_days_refused(demo: SoftKeyStore) -> None:
    with pytest.raises(ConfigError, match="warn_days"):
        check_keys(demo, today=date(2027, 1, 1), warn_days=-1)
