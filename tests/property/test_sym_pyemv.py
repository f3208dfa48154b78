"""Property tests: our EMV derivations and MACs against pyemv and psec on random inputs.

pyemv 1.5.0 and psec 1.3.0 are independent implementations (test-only
dependencies).  Keys are random, PANs random of 12..19 digits, PSN random or
absent.
"""

from __future__ import annotations

import psec
import pyemv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto.ciphers import Algorithm, BlockCipher
from pipeline.crypto.emv import (
    IccMkDeriver,
    derive_icc_mk,
    derive_session_key,
    generate_arpc_1,
    generate_arpc_2,
    generate_arqc,
)
from pipeline.crypto.kcv import kcv
from pipeline.crypto.mac import iso9797_mac_alg1, iso9797_mac_alg3

pytestmark = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning"
)

keys16 = st.binary(min_size=16, max_size=16)
pans = st.integers(min_value=12, max_value=19).flatmap(
    lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n)
)
psns = st.none() | st.text(alphabet="0123456789", min_size=2, max_size=2)
SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(imk=keys16, pan=pans, psn=psns)
def test_option_a_matches_pyemv(imk: bytes, pan: str, psn: str | None) -> None:
    expected = pyemv.kd.derive_icc_mk_a(imk, pan, psn)
    assert derive_icc_mk(imk, pan, psn, "A") == expected
    assert IccMkDeriver(imk, "A").derive(pan, psn) == expected


@SETTINGS
@given(imk=keys16, pan=pans, psn=psns)
def test_option_b_matches_pyemv(imk: bytes, pan: str, psn: str | None) -> None:
    expected = pyemv.kd.derive_icc_mk_b(imk, pan, psn)
    assert derive_icc_mk(imk, pan, psn, "B") == expected
    assert IccMkDeriver(imk, "B").derive(pan, psn) == expected


@SETTINGS
@given(mk=keys16, r=st.binary(min_size=8, max_size=8))
def test_session_key_matches_pyemv(mk: bytes, r: bytes) -> None:
    assert derive_session_key(mk, r) == pyemv.kd.derive_common_sk(mk, r)


@SETTINGS
@given(sk=keys16, data=st.binary(max_size=80))
def test_arqc_matches_pyemv(sk: bytes, data: bytes) -> None:
    assert generate_arqc(sk, data) == pyemv.ac.generate_ac(sk, data)


@SETTINGS
@given(sk=keys16, arqc=st.binary(min_size=8, max_size=8), arc=st.binary(min_size=2, max_size=2),
       csu=st.binary(min_size=4, max_size=4), prop=st.binary(max_size=8))
def test_arpc_matches_pyemv(sk: bytes, arqc: bytes, arc: bytes, csu: bytes, prop: bytes) -> None:
    assert generate_arpc_1(sk, arqc, arc) == pyemv.ac.generate_arpc_1(sk, arqc, arc)
    assert generate_arpc_2(sk, arqc, csu, prop) == pyemv.ac.generate_arpc_2(sk, arqc, csu, prop)


@SETTINGS
@given(key=keys16, data=st.binary(max_size=64), padding=st.sampled_from([1, 2]))
def test_mac_alg3_matches_pyemv_and_psec(key: bytes, data: bytes, padding: int) -> None:
    ours = iso9797_mac_alg3(key, data, padding)
    assert ours == pyemv.mac.mac_iso9797_3(key[:8], key[8:], data, padding)
    assert ours == psec.mac.generate_retail_mac(key[:8], key[8:], data, padding)


@SETTINGS
@given(key=st.sampled_from([16, 24]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       data=st.binary(max_size=64), padding=st.sampled_from([1, 2]))
def test_mac_alg1_tdes_matches_psec(key: bytes, data: bytes, padding: int) -> None:
    expected = psec.mac.generate_cbc_mac(key, data, padding, algorithm=psec.mac.Algorithm.DES)
    assert iso9797_mac_alg1(key, data, padding) == expected


@SETTINGS
@given(key=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       data=st.binary(max_size=64), padding=st.sampled_from([1, 2]))
def test_mac_alg1_aes_matches_psec(key: bytes, data: bytes, padding: int) -> None:
    expected = psec.mac.generate_cbc_mac(key, data, padding, algorithm=psec.mac.Algorithm.AES)
    assert iso9797_mac_alg1(key, data, padding, Algorithm.AES) == expected


@SETTINGS
@given(key=st.sampled_from([16, 24]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       length=st.integers(1, 8))
def test_tdes_kcv_matches_psec_and_pyemv(key: bytes, length: int) -> None:
    assert kcv(key, "tdes", length) == psec.des.generate_kcv(key, length)
    assert kcv(key, "tdes", length) == pyemv.tools.key_check_digits(key, length)


@SETTINGS
@given(key=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       iv=st.binary(min_size=16, max_size=16), blocks=st.integers(1, 6), data=st.data())
def test_aes_cbc_matches_psec(key: bytes, iv: bytes, blocks: int, data: st.DataObject) -> None:
    plain = data.draw(st.binary(min_size=16 * blocks, max_size=16 * blocks))
    c = BlockCipher(Algorithm.AES, key)
    assert c.encrypt_cbc(plain, iv) == psec.aes.encrypt_aes_cbc(key, iv, plain)
    assert c.decrypt_cbc(plain, iv) == psec.aes.decrypt_aes_cbc(key, iv, plain)
