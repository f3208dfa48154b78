"""SM3 (GB/T 32905-2016) through cryptography: known answers and cross-check with gmssl."""

from __future__ import annotations

import pytest
from gmssl import sm3 as gm_sm3
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.sm3 import DIGEST_SIZE, sm3, sm3_concat
from pipeline.errors import InvalidInputError
from tests.conftest import load_vectors

VECTORS = load_vectors("sm3")


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_sm3_known_answers(vector: dict[str, object]) -> None:
    inputs = vector["inputs"]
    expected = vector["expected"]
    assert isinstance(inputs, dict) and isinstance(expected, dict)
    digest = sm3(bytes.fromhex(inputs["message_hex"]))
    assert digest.hex().upper() == expected["digest"]
    assert len(digest) == DIGEST_SIZE


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_sm3_matches_gmssl(data: bytes) -> None:
    """gmssl's pure-Python SM3 is an independent implementation."""
    assert sm3(data).hex() == gm_sm3.sm3_hash(list(data))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=5))
def test_sm3_concat_equals_hash_of_join(parts: list[bytes]) -> None:
    assert sm3_concat(*parts) == sm3(b"".join(parts))


def test_sm3_rejects_non_bytes() -> None:
    with pytest.raises(InvalidInputError, match="data"):
        sm3("abc")  # type: ignore[arg-type]
