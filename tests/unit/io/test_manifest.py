"""Manifest canonical form and MAC (pipeline.io.manifest).

No published vector exists for a cardprep manifest; the MAC is cross-checked
against a second computation: ``store.mac`` over the canonical JSON produced
independently here with ``json.dumps`` (sorted keys, compact separators).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import VerificationError
from pipeline.io.manifest import (
    canonical_manifest,
    check_json_safe,
    load_manifest,
    seal_manifest,
    verify_manifest_mac,
    write_manifest,
)

BODY = {"batch_id": "00ab12cd34ef5678", "counts": {"in": 3, "prepared": 2, "rejected": 1},
        "files": [{"path": "parts/part-00000.parquet", "sha256": "00" * 32}]}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5))
@settings(max_examples=150, deadline=None)
def test_canonical_is_independent_of_key_order_and_excludes_mac(doc: dict) -> None:
    reordered = dict(reversed(list(doc.items())))
    expected = json.dumps({k: v for k, v in doc.items() if k != "mac"}, sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_manifest(doc) == canonical_manifest(reordered) == expected
    assert canonical_manifest({**doc, "mac": {"value": "AA"}}) == expected


def test_floats_are_refused() -> None:
    with pytest.raises(VerificationError, match=r"counts\.rate"):
        check_json_safe({"counts": {"rate": 0.5}})


def test_seal_then_verify_and_independent_mac(store, tk) -> None:
    sealed = seal_manifest(BODY, store, tk)
    assert verify_manifest_mac(sealed, store) == tk
    independent = json.dumps(BODY, sort_keys=True, separators=(",", ":")).encode()
    assert sealed["mac"]["value"] == store.mac(tk, independent, "manifest").hex().upper()
    assert sealed["mac"]["kcv"] == store.get(tk).kcv.hex().upper()


@pytest.mark.parametrize("path,value", [
    (("counts", "prepared"), 3), (("batch_id",), "00ab12cd34ef5679"),
    (("files",), []),
])
def test_any_edited_field_breaks_the_mac(store, tk, path, value) -> None:
    sealed = json.loads(json.dumps(seal_manifest(BODY, store, tk)))
    target = sealed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(VerificationError, match=r"\[mac\]"):
        verify_manifest_mac(sealed, store)


def test_wrong_kcv_beside_the_mac_is_named(store, tk) -> None:
    sealed = seal_manifest(BODY, store, tk)
    sealed["mac"]["kcv"] = "000000"
    with pytest.raises(VerificationError, match=r"\[mac key kcv\]"):
        verify_manifest_mac(sealed, store)


def test_missing_mac_and_other_purpose(store, tk) -> None:
    with pytest.raises(VerificationError, match="no mac member"):
        verify_manifest_mac(BODY, store)
    sealed = seal_manifest(BODY, store, tk)
    sealed["mac"]["purpose"] = "audit"
    with pytest.raises(VerificationError, match="purpose"):
        verify_manifest_mac(sealed, store)


def test_write_and_load_round_trip(tmp_path: Path, store, tk) -> None:
    sealed = seal_manifest(BODY, store, tk)
    write_manifest(tmp_path / "manifest.json", sealed)
    assert verify_manifest_mac(load_manifest(tmp_path / "manifest.json"), store) == tk
    with pytest.raises(VerificationError, match="not published"):
        load_manifest(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(VerificationError, match="not a JSON object"):
        load_manifest(tmp_path / "bad.json")
