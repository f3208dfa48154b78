"""EMV Book 2 5.3 step 8: the issuer certificate's identifier must prefix the PAN."""

from __future__ import annotations

import pytest

from pipeline.errors import VerificationError
from pipeline.records.issuers import load_issuer
from pipeline.steps.verify import _check_issuer_identifier


def test_matching_prefix_passes() -> None:
    _check_issuer_identifier("47617", "4761739001010119")
    _check_issuer_identifier("623456", "6234560000000000017")


def test_mismatch_names_field_and_masks_pan() -> None:
    with pytest.raises(VerificationError, match="issuer identifier 629999") as info:
        _check_issuer_identifier("629999", "6234560000000000017")
    assert "6234560000000000017" not in str(info.value)
    assert "623456*********0017" in str(info.value)


def test_demo_bins_share_the_demo_issuer_identifiers() -> None:
    """Every demo BIN is covered by its product's demo issuer certificate identifier."""
    identifiers = {"demo-visa-rsa": "47617", "demo-pboc-sm2": "623456"}
    for issuer in ("demo", "demo-csv", "demo-json"):
        cfg = load_issuer(issuer)
        for bin_, product in cfg.bins.items():
            assert bin_.startswith(identifiers[product]), (issuer, bin_)
