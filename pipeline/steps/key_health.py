"""Key health: re-check the KCV of every active key and warn about expiring certificates.

The step behind the ``key_health`` DAG (daily).  Two checks:

1. **KCV** (ANSI X9.24-1 / PCI PIN Security req. 19: key check values
   verify that a key is the one expected): for every ACTIVE key the store
   recomputes the check value from the key it holds (``store.kcv(ref)``) and
   it must equal the KCV recorded when the key entered.  A mismatch, or a
   store that refuses, is a failure: the key must not be used.
2. **Certificate expiry** (EMV Book 2 section 5.3 table 13 / PBOC 2.0 part 7
   format 12: the issuer public key certificate carries its expiration date
   as MMYY, valid through the last day of that month): an issuer certificate
   expiring within ``warn_days`` (90) is a warning; an expired one attached
   to an ACTIVE issuer key is a failure (cards would carry an expired
   certificate).  CA signing keys carry no expiry in the key store (the
   scheme publishes it with the CA public key); they are listed under
   ``no_expiry_recorded`` so the report says so instead of staying silent.

The result is a JSON-able dict of labels, versions, KCVs (hex) and dates
only: it goes to XCom and task logs.

Example:
    >>> certificate_expiry("1230")
    datetime.date(2030, 12, 31)
    >>> days_left("0227", date(2027, 1, 31))
    28
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime
from typing import Any

from pipeline.errors import CardprepError, ConfigError, KeyStoreError
from pipeline.keys.model import KeyRecord, KeyRole, KeyState
from pipeline.keys.store import KeyStore

__all__ = ["DEFAULT_WARN_DAYS", "certificate_expiry", "check_keys", "days_left", "key_health"]

#: Warn this many days before an issuer or CA certificate expires (issue 6).
DEFAULT_WARN_DAYS = 90


def certificate_expiry(mmyy: str) -> date:
    """Last day a certificate with expiration date ``MMYY`` is valid (EMV Book 2 5.3).

    >>> certificate_expiry("0228")
    datetime.date(2028, 2, 29)
    """
    if len(mmyy) != 4 or not mmyy.isdigit() or not 1 <= int(mmyy[:2]) <= 12:
        raise ConfigError("certificate.expiry", f"expected MMYY, got {mmyy!r}")
    month, year = int(mmyy[:2]), 2000 + int(mmyy[2:])
    return date(year, month, calendar.monthrange(year, month)[1])


def days_left(mmyy: str, today: date) -> int:
    """Days from ``today`` to the certificate's last valid day (negative once expired).

    >>> days_left("1226", date(2026, 12, 31))
    0
    """
    return (certificate_expiry(mmyy) - today).days


def _kcv_check(store: KeyStore, record: KeyRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "key": str(record.ref),
        "role": record.role.value,
        "expected_kcv": record.kcv.hex().upper(),
    }
    try:
        actual = store.kcv(record.ref)
    except CardprepError as exc:  # messages name labels only (errors.py contract)
        return {**entry, "ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    entry["kcv"] = actual.hex().upper()
    entry["ok"] = actual == record.kcv
    if not entry["ok"]:
        entry["detail"] = "KCV recomputed by the store differs from the recorded KCV"
    return entry


def check_keys(
    store: KeyStore,
    *,
    today: date,
    warn_days: int = DEFAULT_WARN_DAYS,
    owner: str | None = None,
) -> dict[str, Any]:
    """Check every ACTIVE key of ``store`` (optionally of one ``owner``); never raises per key.

    Returns ``{"checked", "kcv_ok", "kcv_failures", "expiring", "expired",
    "no_expiry_recorded", "healthy"}``; ``healthy`` is False when any KCV
    fails or an active issuer certificate has expired.
    """
    if warn_days < 0:
        raise ConfigError("warn_days", f"must be >= 0, got {warn_days}")
    kcv_ok: list[dict[str, Any]] = []
    kcv_failures: list[dict[str, Any]] = []
    expiring: list[dict[str, Any]] = []
    expired: list[dict[str, Any]] = []
    no_expiry: list[str] = []
    active = [r for r in store.list(owner) if r.state is KeyState.ACTIVE]
    for record in active:
        check = _kcv_check(store, record)
        (kcv_ok if check["ok"] else kcv_failures).append(check)
        if record.certificate is not None:
            left = days_left(record.certificate.expiry, today)
            cert = {
                "key": str(record.ref),
                "format": record.certificate.format,
                "expiry": record.certificate.expiry,
                "valid_through": certificate_expiry(record.certificate.expiry).isoformat(),
                "days_left": left,
            }
            if left < 0:
                expired.append(cert)
            elif left <= warn_days:
                expiring.append(cert)
        elif record.role is KeyRole.CA_SIGNING:
            no_expiry.append(str(record.ref))
    return {
        "checked": len(active),
        "kcv_ok": kcv_ok,
        "kcv_failures": kcv_failures,
        "expiring": expiring,
        "expired": expired,
        "no_expiry_recorded": no_expiry,
        "warn_days": warn_days,
        "today": today.isoformat(),
        "healthy": not kcv_failures and not expired,
    }


def key_health(
    store: KeyStore,
    *,
    today: date | None = None,
    warn_days: int = DEFAULT_WARN_DAYS,
    fail: bool = True,
) -> dict[str, Any]:
    """The ``key_health`` task: :func:`check_keys`, raising when the keys are not healthy.

    With ``fail`` (the default) a KCV failure or an expired active issuer
    certificate raises :class:`KeyStoreError` naming the keys, so the Airflow
    task fails and alerts; expiring certificates are warnings in the result.
    """
    report = check_keys(store, today=today or datetime.now(UTC).date(), warn_days=warn_days)
    if fail and not report["healthy"]:
        bad = [c["key"] for c in report["kcv_failures"]] + [c["key"] for c in report["expired"]]
        raise KeyStoreError(
            "key_health",
            f"{len(report['kcv_failures'])} KCV failure(s), {len(report['expired'])} expired "
            f"certificate(s): {', '.join(bad)}",
        )
    return report
