"""Property tests: TR-31 wrap by us / unwrap by psec and the reverse, random keys and headers."""

from __future__ import annotations

import psec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.tr31 import Header, unwrap, wrap

pytestmark = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning"
)

# (version, KBPK length, wrapped algorithm, wrapped key length): KBPK never weaker.
CASES = [
    ("B", 16, "T", 16), ("B", 16, "T", 8), ("B", 24, "T", 16), ("B", 24, "T", 24),
    ("D", 16, "A", 16), ("D", 24, "A", 24), ("D", 32, "A", 32), ("D", 32, "A", 16),
    ("D", 16, "T", 16), ("D", 16, "T", 24), ("D", 32, "T", 24),
]
alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
opt_blocks = st.lists(
    st.tuples(
        st.sampled_from(["KS", "KC", "KP", "LB", "TS", "10", "99"]),
        st.text(alphabet=alnum + " -.", min_size=0, max_size=40),
    ),
    max_size=3,
    unique_by=lambda b: b[0],
)


@st.composite
def material(draw: st.DrawFn) -> tuple[bytes, Header, bytes]:
    version, kbpk_len, algorithm, key_len = draw(st.sampled_from(CASES))
    header = Header(
        version=version,
        key_usage=draw(st.sampled_from(["K0", "K1", "E0", "E1", "E2", "D0", "P0", "M3"])),
        algorithm=algorithm,
        mode_of_use=draw(st.sampled_from("BCDEGNSTVX")),
        key_version=draw(st.text(alphabet=alnum, min_size=2, max_size=2)),
        exportability=draw(st.sampled_from("ENS")),
        blocks=tuple(draw(opt_blocks)),
    )
    kbpk = draw(st.binary(min_size=kbpk_len, max_size=kbpk_len))
    key = draw(st.binary(min_size=key_len, max_size=key_len))
    return kbpk, header, key


@settings(max_examples=150, deadline=None)
@given(m=material())
def test_we_wrap_psec_unwraps(m: tuple[bytes, Header, bytes]) -> None:
    kbpk, header, key = m
    block = wrap(kbpk, header, key)
    psec_header, psec_key = psec.tr31.unwrap(kbpk, block)
    assert psec_key == key
    assert psec_header.key_usage == header.key_usage
    assert psec_header.version_num == header.key_version
    sent = dict(header.blocks)
    got = {k: v for k, v in psec_header.blocks.items() if k != "PB"}
    assert got == sent


@settings(max_examples=150, deadline=None)
@given(m=material())
def test_psec_wraps_we_unwrap(m: tuple[bytes, Header, bytes]) -> None:
    kbpk, header, key = m
    text = header.render(0)
    block = psec.tr31.wrap(kbpk, text, key)
    our_header, our_key = unwrap(kbpk, block)
    assert our_key == key
    non_pb = tuple(b for b in our_header.blocks if b[0] != "PB")
    assert non_pb == header.blocks
    assert (our_header.key_usage, our_header.mode_of_use, our_header.exportability) == (
        header.key_usage, header.mode_of_use, header.exportability)
