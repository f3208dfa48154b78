"""GlobalPlatform card key diversification (pipeline.crypto.gp)."""

from __future__ import annotations

import pytest

from pipeline.crypto.gp import diversify_card_keys
from pipeline.crypto.kcv import kcv
from pipeline.errors import InvalidInputError, KeyLengthError
from tests.conftest import load_vectors

VECTORS = load_vectors("gp_diversification")


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_gp_vectors(v: dict) -> None:
    keys = diversify_card_keys(
        bytes.fromhex(v["inputs"]["kmc"]), bytes.fromhex(v["inputs"]["kdd"]), v["method"]
    )
    exp = v["expected"]
    checked = 0
    for name, key in zip(("enc", "mac", "dek"), keys, strict=True):
        assert len(key) == len(bytes.fromhex(v["inputs"]["kmc"]))
        if f"kcv_{name}" in exp:
            assert kcv(key, v["kcv_method"]).hex().upper() == exp[f"kcv_{name}"]
            checked += 1
        if f"k_{name}" in exp:
            assert key.hex().upper() == exp[f"k_{name}"]
            checked += 1
    assert checked >= 1


def test_our_full_keys_for_the_kcv_vector() -> None:
    """The full keys noted as our computation agree with the published KCVs."""
    v = next(v for v in VECTORS if "our_computation" in v)
    keys = diversify_card_keys(bytes.fromhex(v["inputs"]["kmc"]), bytes.fromhex(v["inputs"]["kdd"]))
    ours = v["our_computation"]
    assert [k.hex().upper() for k in keys] == [ours["k_enc"], ours["k_mac"], ours["k_dek"]]


def test_methods_differ_and_use_their_kdd_bytes() -> None:
    kmc = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
    kdd = bytes(range(10))
    emv = diversify_card_keys(kmc, kdd, "emv")
    visa2 = diversify_card_keys(kmc, kdd, "visa2")
    assert emv != visa2
    # EMV uses KDD[4..9] only; VISA2 uses KDD[0..1] || KDD[4..7] only.
    assert diversify_card_keys(kmc, b"\xff" * 4 + kdd[4:], "emv") == emv
    other = kdd[:2] + b"\xff" * 2 + kdd[4:8] + b"\xff" * 2
    assert diversify_card_keys(kmc, other, "visa2") == visa2


def test_gp_errors() -> None:
    kmc = bytes(16)
    with pytest.raises(InvalidInputError, match="kdd"):
        diversify_card_keys(kmc, bytes(8))
    with pytest.raises(InvalidInputError, match="method"):
        diversify_card_keys(kmc, bytes(10), "visa")
    with pytest.raises(KeyLengthError, match="kmc"):
        diversify_card_keys(bytes(24), bytes(10), "emv")
    with pytest.raises(KeyLengthError, match="kmc"):
        diversify_card_keys(bytes(8), bytes(10), "kdf3")
