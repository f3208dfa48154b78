"""The soft store caches the usage/state verdict per (key, operation): never across either.

No public vector applies (store behaviour); each test fails if the cache were
keyed by the key alone or outlived a refreshed record.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import KeyStateError, KeyUsageError
from pipeline.keys.model import DerivationMethod, KeyAlgorithm, KeyRole, KeyUsage
from pipeline.keys.soft import SoftKeyStore
from tests.unit.keys.storekit import HMK, FakeClock, new_store
from tests.unit.keys.test_store_soft import IMK, TK, _import

PAN = "4761739001010119"


def test_a_permitted_operation_does_not_permit_another_on_the_same_key(tmp_path: Path) -> None:
    s = new_store(tmp_path, FakeClock())
    imk = _import(s, "imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, IMK)
    tk = _import(s, "tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, TK, owner="bureau:demo")
    for _ in range(2):  # second call served from the cached verdict
        s.derive_and_wrap(imk, PAN, "01", DerivationMethod.OPTION_A, tk)
    with pytest.raises(KeyUsageError, match=r"usage E0 does not permit sign"):
        s.sign(imk, b"data")
    with pytest.raises(KeyUsageError, match=r"usage K0 does not permit derive\b"):
        s.derive_and_wrap(tk, PAN, "01", DerivationMethod.OPTION_A, tk)


def test_a_cached_verdict_is_dropped_when_the_record_is_re_read(tmp_path: Path) -> None:
    s = new_store(tmp_path, FakeClock())
    imk = _import(s, "imk", KeyAlgorithm.TDES2, KeyUsage.E0, KeyRole.IMK_AC, IMK)
    tk = _import(s, "tk", KeyAlgorithm.TDES2, KeyUsage.K0, KeyRole.TK, TK, owner="bureau:demo")
    worker = SoftKeyStore(s.path, HMK, read_only=True, cache_ttl=0.0)
    worker.translate(bytes(8), tk, tk)  # TK verdicts cached (translate from / to)
    worker.derive_and_wrap(imk, PAN, "01", DerivationMethod.OPTION_A, tk)
    s.suspend(tk, actor="o", reason="test")
    with pytest.raises(KeyStateError, match=r"state suspended"):
        worker.derive_and_wrap(imk, PAN, "01", DerivationMethod.OPTION_A, tk)
    with pytest.raises(KeyStateError, match=r"state suspended"):
        worker.translate(bytes(8), tk, tk)
