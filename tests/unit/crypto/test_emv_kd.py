"""EMV / PBOC key derivation and cryptograms (pipeline.crypto.emv)."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.crypto.ciphers import Algorithm, BlockCipher, fix_parity, xor
from pipeline.crypto.emv import (
    DerivationOption,
    IccMkDeriver,
    derive_icc_mk,
    derive_session_key,
    derive_session_key_sm4,
    generate_ac_sm4,
    generate_arpc_1,
    generate_arpc_2,
    generate_arqc,
    option_b_y,
)
from pipeline.crypto.kcv import kcv
from pipeline.errors import InvalidInputError, KeyLengthError
from tests.conftest import load_vectors

VECTORS = {v["name"].split(":")[0].split(" (")[0]: v for v in load_vectors("emv_kd")}
IMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


@pytest.mark.parametrize("option", ["A", "B"])
def test_icc_mk_vectors(option: str) -> None:
    v = VECTORS[f"EMV ICC MK Option {option}"]
    i = v["inputs"]
    args = (bytes.fromhex(i["imk"]), i["pan"], i["psn"])
    assert derive_icc_mk(*args, option=option).hex().upper() == v["expected"]["icc_mk"]
    assert IccMkDeriver(args[0], option).derive(i["pan"], i["psn"]).hex().upper() == (
        v["expected"]["icc_mk"]
    )


def test_session_key_vector() -> None:
    v = VECTORS["EMV common session key derivation"]
    sk = derive_session_key(bytes.fromhex(v["inputs"]["icc_mk"]), bytes.fromhex(v["inputs"]["R"]))
    assert sk.hex().upper() == v["expected"]["session_key"]
    # The vector's note gives the value before parity adjustment.
    assert fix_parity(bytes.fromhex("E8FA394BF807B841FEDCEA603461B1C5")) == sk


def test_arqc_arpc_vectors() -> None:
    v = VECTORS["ARQC/ARPC with given session key"]
    sk = bytes.fromhex(v["inputs"]["session_key"])
    arqc = generate_arqc(sk, bytes.fromhex(v["inputs"]["ac_data"]))
    assert arqc.hex().upper() == v["expected"]["arqc"]
    arc, csu = bytes.fromhex(v["inputs"]["arc"]), bytes.fromhex(v["inputs"]["csu"])
    assert generate_arpc_1(sk, arqc, arc).hex().upper() == v["expected"]["arpc_method1"]
    assert generate_arpc_2(sk, arqc, csu).hex().upper() == v["expected"]["arpc_method2"]


def test_psn_none_is_00_and_psn_matters() -> None:
    pan = "4761739001010119"
    assert derive_icc_mk(IMK, pan) == derive_icc_mk(IMK, pan, "00")
    assert derive_icc_mk(IMK, pan, "01") != derive_icc_mk(IMK, pan, "00")


def test_option_b_equals_a_up_to_16_digits() -> None:
    for pan in ("476173900101", "4761739001010119"):
        assert derive_icc_mk(IMK, pan, "01", "B") == derive_icc_mk(IMK, pan, "01", "A")
    assert derive_icc_mk(IMK, "4761739001010119123", "01", "B") != derive_icc_mk(
        IMK, "4761739001010119123", "01", "A"
    )


def test_option_b_decimalisation_uses_a_to_f_when_digits_run_short() -> None:
    """Find a PAN whose SHA-1 has fewer than 16 decimal nibbles and check step 3 by hand."""
    for n in range(200000):
        pan = f"{6200000000000000000 + n:019d}"
        digest = hashlib.sha1(bytes.fromhex("0" + pan + "00")).hexdigest()
        if sum(c.isdigit() for c in digest) < 16:
            break
    else:  # pragma: no cover - a 40-nibble digest with < 16 digits appears about 1 in 50
        pytest.fail("no short-digit digest found")
    digits = "".join(c for c in digest if c.isdigit())
    letters = "".join(str(int(c, 16) - 10) for c in digest if not c.isdigit())
    assert option_b_y(pan, "00").hex() == (digits + letters)[:16]


def test_option_c_aes_two_computations() -> None:
    """No published Option C vector (DOMAIN.md 3): compare with a direct AES computation."""
    for imk_len in (16, 24, 32):
        imk = bytes(range(imk_len))
        pan, psn = "4761739001010119", "01"
        y = bytes.fromhex((pan + psn).rjust(32, "0"))
        c = BlockCipher(Algorithm.AES, imk)
        expected = (c.encrypt_ecb(y) + c.encrypt_ecb(xor(y, b"\xff" * 16)))[:imk_len]
        assert derive_icc_mk(imk, pan, psn, option="C") == expected
        assert derive_icc_mk(imk, pan, psn, option="aes") == expected
        assert IccMkDeriver(imk, DerivationOption.C).derive(pan, psn) == expected


def test_sm4_derivation_two_computations() -> None:
    """No published PBOC SM4 vector (DOMAIN.md 3): Y as Option A, then SM4 of Y || not Y.

    The second computation builds Y from the digits by hand and uses the SM4
    block cipher directly.
    """
    imk = bytes.fromhex("FEDCBA98765432100123456789ABCDEF")
    pan, psn = "6212345678901234567", "03"
    y = bytes.fromhex("4567890123456703")  # rightmost 16 digits of PAN || PSN
    ny = bytes(0xFF - b for b in y)
    expected = BlockCipher(Algorithm.SM4, imk).encrypt_ecb(y + ny)
    mk = derive_icc_mk(imk, pan, psn, option="sm4")
    assert mk == expected and len(mk) == 16
    assert IccMkDeriver(imk, "SM4").derive(pan, psn) == mk


def test_sm4_session_key_and_ac_two_computations() -> None:
    """No published vector: session key block layout and SM4-CBC-MAC, computed by hand."""
    mk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    atc = bytes.fromhex("00A5")
    sk = derive_session_key_sm4(mk, atc)
    block = bytes.fromhex("000000000000" "00A5" "000000000000" "FF5A")
    assert sk == BlockCipher(Algorithm.SM4, mk).encrypt_ecb(block)
    data = bytes(range(29))
    padded = data + b"\x80" + bytes(2)
    c = BlockCipher(Algorithm.SM4, sk)
    h = c.encrypt_ecb(padded[:16])
    h = c.encrypt_ecb(xor(h, padded[16:]))
    assert generate_ac_sm4(sk, data) == h[:8]
    assert generate_ac_sm4(sk, data, length=4) == h[:4]


def test_deriver_equals_function_on_many_pans() -> None:
    for option in ("A", "B", "C", "sm4"):
        imk = IMK if option != "C" else bytes(range(32))
        d = IccMkDeriver(imk, option)
        for length in range(12, 20):
            pan = ("9876543210987654321" * 2)[:length]
            for psn in (None, "00", "07"):
                assert d.derive(pan, psn) == derive_icc_mk(imk, pan, psn, option)


def test_derived_3des_keys_have_odd_parity() -> None:
    mk = derive_icc_mk(IMK, "4761739001010119", "01")
    assert all(bin(b).count("1") % 2 for b in mk)
    assert kcv(mk) == kcv(bytes(b ^ 1 for b in mk))  # parity bits do not change the key


@pytest.mark.parametrize(
    ("pan", "why"),
    [
        ("12345678901", "12..19"),
        ("12345678901234567890", "12..19"),
        ("1234567890123A", "digits only"),
        ("4761 7390 0101 0119", "digits only"),
        ("", "digits only"),
        ("４７６１７３９００１０１０１１９", "digits only"),  # full-width digits
    ],
)
def test_bad_pan(pan: str, why: str) -> None:
    with pytest.raises(InvalidInputError, match=why) as err:
        derive_icc_mk(IMK, pan, "00")
    assert err.value.field == "pan"
    if len(pan) >= 13:
        assert pan not in str(err.value)


def test_bad_pan_message_is_masked() -> None:
    pan = "476173900101011X"
    with pytest.raises(InvalidInputError) as err:
        IccMkDeriver(IMK).derive(pan)
    assert "476173******011X" in str(err.value) and pan not in str(err.value)


@pytest.mark.parametrize("psn", ["1", "001", "A1", " 1"])
def test_bad_psn(psn: str) -> None:
    with pytest.raises(InvalidInputError, match="2 digits") as err:
        derive_icc_mk(IMK, "4761739001010119", psn)
    assert err.value.field == "psn"


def test_bad_option_and_key_lengths() -> None:
    with pytest.raises(InvalidInputError, match="option"):
        derive_icc_mk(IMK, "4761739001010119", option="D")
    with pytest.raises(KeyLengthError, match="imk"):
        derive_icc_mk(IMK + IMK[:8], "4761739001010119", option="A")
    with pytest.raises(KeyLengthError):
        derive_icc_mk(bytes(8), "4761739001010119", option="C")
    with pytest.raises(KeyLengthError):
        derive_icc_mk(bytes(32), "4761739001010119", option="sm4")
    with pytest.raises(KeyLengthError, match="mk"):
        derive_session_key(bytes(24), bytes(8))
    with pytest.raises(InvalidInputError, match="r"):
        derive_session_key(IMK, bytes(7))
    with pytest.raises(InvalidInputError, match="atc"):
        derive_session_key_sm4(IMK, bytes(3))
    with pytest.raises(InvalidInputError, match="arc"):
        generate_arpc_1(IMK, bytes(8), bytes(3))
    with pytest.raises(InvalidInputError, match="csu"):
        generate_arpc_2(IMK, bytes(8), bytes(3))
    with pytest.raises(InvalidInputError, match="length"):
        generate_ac_sm4(IMK, b"", length=2)


def test_repr_hides_key() -> None:
    assert "0123" not in repr(IccMkDeriver(IMK))
