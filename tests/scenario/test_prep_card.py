"""Scenario: prepare cards of both demo products with the real demo key store, then check
every secret and certificate with independent code.

* card master keys: DGI 8000 decrypted with the clear TEST TK of
  config/demo/keys.yaml and compared with pyemv (Option A) for the RSA
  product, and with an SM4 derivation computed by gmssl (a second, pure
  Python SM4) for the PBOC product (no published SM4 derivation vector
  exists, DOMAIN.md 3);
* KCVs (DGI 9000) recomputed with ``cryptography`` / gmssl directly;
* KMC keys: the published GP/EMV CPS diversification vectors
  (tests/vectors/prep_gp.json);
* RSA ICC certificate: recovered with plain ``pow`` over the issuer public
  key, framing and SHA-1 checked over the static data this test rebuilds from
  the card's own AFL and records; the issuer certificate likewise under the
  demo CA key (the whole chain); the CRT DGIs decrypt to p, q with p*q the
  certified modulus;
* SM2: the private key DGI decrypts to d whose public point (gmssl) is the
  one in the format-14 certificate, whose signature gmssl verifies;
* self-checks: a signer that corrupts signatures gives R080, a store whose
  MK-AC wrap is corrupted, is another key's or whose KCV is wrong gives R081,
  an undecryptable secret R071.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from gmssl import sm2 as gm_sm2
from gmssl import sm4 as gm_sm4
from pyemv import kd

from pipeline.crypto.ciphers import Algorithm, BlockCipher
from pipeline.crypto.kcv import kcv
from pipeline.crypto.padding import pad_iso9797_m2
from pipeline.errors import (
    ConfigError,
    InvalidInputError,
    KeyStoreError,
    KeyUsageError,
    PaddingError,
)
from pipeline.keys.demo import init_demo_store
from pipeline.keys.model import DerivationMethod, TranslateCheck
from pipeline.keys.soft import SoftKeyStore
from pipeline.prep import CardPreparer, PreparedCard, PreparerKeys
from pipeline.profiles import load_product, parse_product
from pipeline.profiles.model import ProductProfile
from pipeline.records.dgi import Dgi, encode_dgis, store_data_apdus
from pipeline.records.reasons import RejectReason
from pipeline.records.validate import CardRecord, Reject
from tests.conftest import load_vectors

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
DEMO_KEYS = {k["label"]: bytes.fromhex(str(k["value"])) for k in yaml.safe_load(
    (CONFIG / "demo" / "keys.yaml").read_text())["keys"]}  # fmt: skip
KEK = BlockCipher(Algorithm.TDES, DEMO_KEYS["demo-kek"])
TK = BlockCipher(Algorithm.TDES, DEMO_KEYS["demo-tk"])
TK_SM4 = BlockCipher(Algorithm.SM4, DEMO_KEYS["demo-tk-sm4"])
PIN_BLOCK = bytes.fromhex("241234FFFFFFFFFF")  # ISO 9564 format 2 block for PIN 1234 (DGI 8010)


def _format0(pin_field: str, pan: str) -> bytes:
    """Independent ISO 9564-1 format 0 encoding: PIN field XOR PAN field."""
    pan_field = int("0000" + pan[-13:-1], 16)
    return (int(pin_field.ljust(16, "F"), 16) ^ pan_field).to_bytes(8, "big")


# The issuer sends format 0 (PAN-bound); the card gets format 2 in DGI 8010.
PIN_BLOCK_ISO0 = _format0("041234", "4761739001010119")
CVV = pad_iso9797_m2(b"123", 8)
GP = {v["inputs"]["kdd"]: v for v in load_vectors("prep_gp")}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftKeyStore]:
    path = tmp_path_factory.mktemp("prep-store")
    s = init_demo_store(
        path / "keys.db",
        CONFIG / "demo" / "keys.yaml",
        passphrase_file=CONFIG / "demo" / "hmk-passphrase.txt",
        audit_path=path / "audit.jsonl",
    )
    yield s
    s.close()


def _preparer(store: Any, profile: ProductProfile) -> CardPreparer:
    keys = PreparerKeys.resolve(store, profile, kek="demo-kek", pan_token="demo-pan-token")
    return CardPreparer(profile, store, keys)


def _card(pan: str, psn: str | None, **kw: Any) -> CardRecord:
    fields: dict[str, Any] = {
        "line_no": 2, "product": "", "pan": pan, "psn": psn, "expiry": "2812",
        "effective": "2301", "service_code": "201", "name": "DOE/JOHN", "discretionary": "0000",
        "kdd": None, "secrets": {}, "extra": {},
    }  # fmt: skip
    fields.update(kw)
    return CardRecord(**fields)


RSA_CARDS = [
    _card("4761739001010119", "01", kdd=bytes(10),
          secrets={"pin_block": KEK.encrypt_ecb(PIN_BLOCK_ISO0), "cvv": KEK.encrypt_ecb(CVV)}),
    _card("4761730000000000003", None, line_no=3, effective=None, discretionary=""),
    _card("4761731234567890", "02", line_no=4, kdd=bytes(range(10)), name="O'NEIL/ANN-MARIE"),
]  # fmt: skip
PBOC_CARDS = [
    _card("6234560000000000017", "00", service_code="220"),
    _card("6234561234567890", None, line_no=5, effective=None),
]


@pytest.fixture(scope="module")
def rsa_profile() -> ProductProfile:
    return load_product("demo-visa-rsa", CONFIG)


@pytest.fixture(scope="module")
def pboc_profile() -> ProductProfile:
    return load_product("demo-pboc-sm2", CONFIG)


@pytest.fixture(scope="module")
def rsa_prepared(store: SoftKeyStore, rsa_profile: ProductProfile) -> list[PreparedCard]:
    preparer = _preparer(store, rsa_profile)
    out = [preparer.prepare(c) for c in RSA_CARDS]
    assert all(isinstance(c, PreparedCard) for c in out), out
    return out  # type: ignore[return-value]


@pytest.fixture(scope="module")
def pboc_prepared(store: SoftKeyStore, pboc_profile: ProductProfile) -> list[PreparedCard]:
    preparer = _preparer(store, pboc_profile)
    out = [preparer.prepare(c) for c in PBOC_CARDS]
    assert all(isinstance(c, PreparedCard) for c in out), out
    return out  # type: ignore[return-value]


# --- independent helpers -----------------------------------------------------------


def _dgi(card: PreparedCard, dgi_id: int) -> Dgi:
    found = card.dgi(dgi_id)
    assert found is not None, f"DGI {dgi_id:04X} missing"
    return found


def _tdes_kcv(key: bytes) -> bytes:
    enc = Cipher(TripleDES(key + key[:8]), modes.ECB()).encryptor()
    return (enc.update(bytes(8)) + enc.finalize())[:3]


def _gm_sm4_ecb(key: bytes, data: bytes) -> bytes:
    sm4 = gm_sm4.CryptSM4(gm_sm4.SM4_ENCRYPT, padding_mode=gm_sm4.ZERO)
    sm4.set_key(key, gm_sm4.SM4_ENCRYPT)
    return bytes(sm4.crypt_ecb(data))[: len(data)]


def _tlvs(data: bytes) -> dict[str, bytes]:
    """Minimal BER-TLV reader (1- or 2-byte tags, 1-byte or 81 lengths), written for this test."""
    out, i = {}, 0
    while i < len(data):
        tag_len = 2 if data[i] & 0x1F == 0x1F else 1
        tag = data[i : i + tag_len].hex().upper()
        i += tag_len
        n = data[i]
        if n == 0x81:
            n, i = data[i + 1], i + 2
        else:
            i += 1
        out[tag] = data[i : i + n]
        i += n
    return out


def _record_objects(card: PreparedCard) -> dict[str, bytes]:
    objects: dict[str, bytes] = {}
    for d in card.dgis:
        if d.id < 0x1F00 and d.id & 0xFF:
            assert d.value[0] == 0x70 and not d.encrypted
            objects |= _tlvs(_tlvs(d.value)["70"])
    return objects


def _static_data(card: PreparedCard, gpo_dgi: int = 0x9104) -> bytes:
    """Book 3 10.3 rebuilt from the card's own GPO response and record DGIs."""
    gpo = _tlvs(_dgi(card, gpo_dgi).value)
    aip, afl = gpo["82"], gpo["94"]
    parts = []
    for k in range(0, len(afl), 4):
        sfi, first, _last, oda = afl[k] >> 3, afl[k + 1], afl[k + 2], afl[k + 3]
        for number in range(first, first + oda):
            record = _dgi(card, (sfi << 8) | number).value
            header = 3 if record[1] == 0x81 else 2
            parts.append(record[header:] if sfi <= 10 else record)
    return b"".join(parts) + aip


def _recover(cert: bytes, modulus: bytes, exponent: bytes) -> bytes:
    n = int.from_bytes(modulus, "big")
    return pow(int.from_bytes(cert, "big"), int.from_bytes(exponent, "big"), n).to_bytes(
        len(modulus), "big"
    )


# --- RSA product -------------------------------------------------------------------


def test_rsa_card_master_keys_match_pyemv(rsa_prepared: list[PreparedCard]) -> None:
    imks = [DEMO_KEYS[n] for n in ("demo-imk-ac", "demo-imk-smi", "demo-imk-smc")]
    for record, card in zip(RSA_CARDS, rsa_prepared, strict=True):
        for key_dgi, kcv_dgi, name in (
            (0x8000, 0x9000, "contact"),
            (0x8001, 0x9001, "contactless"),
        ):
            keys = TK.decrypt_ecb(_dgi(card, key_dgi).value)
            expected = [kd.derive_icc_mk_a(imk, record.pan, record.psn) for imk in imks]
            assert [keys[i : i + 16] for i in (0, 16, 32)] == expected
            kcvs = b"".join(_tdes_kcv(k) for k in expected)
            assert _dgi(card, kcv_dgi).value == kcvs
            assert card.kcvs[f"{name}.mk_ac"] == kcvs[:3].hex().upper()
            assert _dgi(card, key_dgi).encrypted and not _dgi(card, kcv_dgi).encrypted


def test_rsa_kmc_keys_match_published_vectors(rsa_prepared: list[PreparedCard]) -> None:
    full = GP["00000000000000000000"]["expected"]
    keys = TK.decrypt_ecb(_dgi(rsa_prepared[0], 0x8F01).value)
    assert keys.hex().upper() == full["k_enc"] + full["k_mac"] + full["k_dek"]
    kcvs = GP["00010203040506070809"]["expected"]
    assert _dgi(rsa_prepared[2], 0x9F01).value.hex().upper() == (
        kcvs["kcv_enc"] + kcvs["kcv_mac"] + kcvs["kcv_dek"]
    )
    assert rsa_prepared[1].dgi(0x8F01) is None  # no KDD, no GP keys


def test_rsa_pin_and_secrets_translated_to_tk(rsa_prepared: list[PreparedCard]) -> None:
    card = rsa_prepared[0]
    assert TK.decrypt_ecb(_dgi(card, 0x8010).value) == PIN_BLOCK
    assert _dgi(card, 0x9010).value == b"\x03\x03"
    assert TK.decrypt_ecb(_dgi(card, 0x8F20).value) == CVV
    assert card.dgi(0x8F21) is None  # no iCVV in the input
    assert rsa_prepared[1].dgi(0x8010) is None


def test_rsa_records(rsa_prepared: list[PreparedCard]) -> None:
    first = _record_objects(rsa_prepared[0])
    assert first["57"].hex().upper() == "4761739001010119D28122010000"
    assert first["5A"].hex() == "4761739001010119"
    assert first["5F24"].hex() == "281231" and first["5F25"].hex() == "230101"
    assert first["5F34"] == b"\x01" and first["5F20"] == b"DOE/JOHN"
    assert first["8F"] == b"\x99" and first["9F4A"] == b"\x82" and first["9F47"] == b"\x03"
    second = _record_objects(rsa_prepared[1])
    assert second["57"].hex().upper() == "4761730000000000003D2812201F"
    assert second["5A"].hex().upper() == "4761730000000000003F"
    assert "5F34" not in second and "5F25" not in second
    for card in rsa_prepared:
        gpo = _tlvs(_dgi(card, 0x9104).value)
        assert gpo == {"82": bytes.fromhex("3C00"), "94": bytes.fromhex("080101001001010118010300")}
        assert _tlvs(_dgi(card, 0x9102).value)["50"] == b"DEMO VISA"


def test_rsa_certificate_chain_with_plain_pow(
    store: SoftKeyStore, rsa_prepared: list[PreparedCard]
) -> None:
    ca = store.get("demo-ca")
    issuer = store.get("demo-issuer-rsa")
    assert ca.public_key and ca.public_exponent and issuer.public_key and issuer.public_exponent
    n_ca, n_i = len(ca.public_key), len(issuer.public_key)
    for record, card in zip(RSA_CARDS, rsa_prepared, strict=True):
        objects = _record_objects(card)
        # issuer certificate (Book 2 Table 6) under the demo CA key
        rec = _recover(objects["90"], ca.public_key, ca.public_exponent)
        assert (rec[0], rec[1], rec[-1]) == (0x6A, 0x02, 0xBC)
        issuer_field = rec[15 : 15 + n_ca - 36]
        assert issuer_field[:n_i] == issuer.public_key and rec[13] == n_i
        hashed = rec[1 : n_ca - 21] + objects.get("92", b"") + objects["9F32"]
        assert hashlib.sha1(hashed).digest() == rec[n_ca - 21 : n_ca - 1]
        # ICC certificate (Book 2 Table 14) under the issuer key
        rec = _recover(objects["9F46"], issuer.public_key, issuer.public_exponent)
        assert (rec[0], rec[1], rec[-1]) == (0x6A, 0x04, 0xBC)
        assert rec[2:12].hex().upper().rstrip("F") == record.pan
        assert rec[12:14].hex() == "1228"
        key_len = rec[19]
        modulus = (rec[21 : 21 + n_i - 42] + objects["9F48"])[:key_len]
        assert key_len == 144 and len(objects["9F48"]) == 144 - (n_i - 42)
        static = _static_data(card)
        hashed = rec[1 : n_i - 21] + objects["9F48"] + objects["9F47"] + static
        assert hashlib.sha1(hashed).digest() == rec[n_i - 21 : n_i - 1]
        assert hashlib.sha256(modulus).hexdigest() == card.icc_public_key_sha256
        # the CRT DGIs decrypt to the private key of that modulus
        qinv, dq, dp, q, p = (
            int.from_bytes(TK.decrypt_ecb(_dgi(card, d).value), "big")
            for d in (0x8201, 0x8202, 0x8203, 0x8204, 0x8205)
        )
        assert p * q == int.from_bytes(modulus, "big")
        assert (qinv * q) % p == 1 and (dp * 3) % (p - 1) == 1 and (dq * 3) % (q - 1) == 1
    assert len({c.icc_public_key_sha256 for c in rsa_prepared}) == len(rsa_prepared)


def test_rsa_exponent_65537(store: SoftKeyStore) -> None:
    data = yaml.safe_load((CONFIG / "products" / "demo-visa-rsa.yaml").read_text())
    data["icc_key"]["exponent"] = 65537
    card = _preparer(store, parse_product(data)).prepare(RSA_CARDS[1])
    assert isinstance(card, PreparedCard)
    objects = _record_objects(card)
    assert objects["9F47"] == b"\x01\x00\x01"
    issuer = store.get("demo-issuer-rsa")
    assert issuer.public_key and issuer.public_exponent
    rec = _recover(objects["9F46"], issuer.public_key, issuer.public_exponent)
    n_i = len(issuer.public_key)
    hashed = rec[1 : n_i - 21] + objects["9F48"] + objects["9F47"] + _static_data(card)
    assert hashlib.sha1(hashed).digest() == rec[n_i - 21 : n_i - 1]


def test_prepared_card_metadata(rsa_prepared: list[PreparedCard], store: SoftKeyStore) -> None:
    card = rsa_prepared[0]
    assert card.masked_pan == "476173******0119" and card.line_no == 2
    assert card.product == "demo-visa-rsa"
    assert len(card.pan_token) == 32
    assert card.pan_token == store.pan_token(store.active("demo-pan-token"), "4761739001010119")
    assert card.pan_token != rsa_prepared[1].pan_token
    assert "4761739001010119" not in repr(card)
    apdus = store_data_apdus(card.dgis)
    expected = [d.encrypted for d in card.dgis for _ in range(0, len(d.encode()), 255)]
    assert [a[2] & 0x60 == 0x60 for a in apdus] == expected  # 0302 (254 bytes) takes two
    assert b"".join(a[5:] for a in apdus) == encode_dgis(card.dgis)
    assert [a[3] for a in apdus] == list(range(len(apdus)))
    assert apdus[-1][2] & 0x80 and not any(a[2] & 0x80 for a in apdus[:-1])


# --- PBOC SM2 product --------------------------------------------------------------


def test_pboc_card_keys_match_gmssl_sm4(pboc_prepared: list[PreparedCard]) -> None:
    imks = [DEMO_KEYS[n] for n in ("demo-sm4-imk-ac", "demo-sm4-imk-smi", "demo-sm4-imk-smc")]
    for record, card in zip(PBOC_CARDS, pboc_prepared, strict=True):
        keys = TK_SM4.decrypt_ecb(_dgi(card, 0x8000).value)
        y = bytes.fromhex((record.pan + (record.psn or "00"))[-16:].rjust(16, "0"))
        not_y = bytes(b ^ 0xFF for b in y)
        expected = [_gm_sm4_ecb(imk, y + not_y) for imk in imks]
        assert [keys[i : i + 16] for i in (0, 16, 32)] == expected
        kcvs = b"".join(_gm_sm4_ecb(k, bytes(16))[:3] for k in expected)
        assert _dgi(card, 0x9000).value == kcvs


def _gmssl_verifier(public_key: bytes) -> gm_sm2.CryptSM2:
    """gmssl's verifier for ``public_key`` (x || y).

    gmssl's constructor does ``public_key.lstrip("04")`` when the hex starts
    with "04", which also eats leading '0'/'4' digits of x (1 key in 256):
    set the attribute after construction so every random key works.
    """
    verifier = gm_sm2.CryptSM2(private_key=None, public_key="")
    verifier.public_key = public_key.hex()
    return verifier


def test_pboc_certificates_verify_with_gmssl(
    store: SoftKeyStore, pboc_prepared: list[PreparedCard]
) -> None:
    ca = store.get("demo-sm2-ca")
    issuer = store.get("demo-sm2-issuer")
    assert ca.public_key and issuer.public_key
    for record, card in zip(PBOC_CARDS, pboc_prepared, strict=True):
        objects = _record_objects(card)
        assert objects["8F"] == b"\x98" and "9F47" not in objects and "9F32" not in objects
        issuer_cert = objects["90"]
        assert len(issuer_cert) == 142 and issuer_cert[0] == 0x12
        assert issuer_cert[14:78] == issuer.public_key
        ca_verifier = _gmssl_verifier(ca.public_key)
        assert ca_verifier.verify_with_sm3(issuer_cert[78:].hex(), issuer_cert[:78])
        cert = objects["9F46"]
        assert len(cert) == 148 and cert[0] == 0x14
        assert cert[1:11].hex().upper().rstrip("F") == record.pan
        assert cert[16:20].hex() == "04001140"
        verifier = _gmssl_verifier(issuer.public_key)
        assert verifier.verify_with_sm3(cert[84:].hex(), cert[:84] + _static_data(card))
        assert not verifier.verify_with_sm3(cert[84:].hex(), cert[:84] + _static_data(card)[1:])
        # the private key DGI decrypts to d whose public point is the certified key
        d = TK_SM4.decrypt_ecb(_dgi(card, 0x8100).value)
        assert len(d) == 32 and _dgi(card, 0x8100).encrypted
        public = gm_sm2.CryptSM2(private_key=d.hex(), public_key="")._kg(
            int.from_bytes(d, "big"), gm_sm2.default_ecc_table["g"]
        )
        assert bytes.fromhex(public) == cert[20:84]
        assert hashlib.sha256(cert[20:84]).hexdigest() == card.icc_public_key_sha256


# --- self-checks and rejects ---------------------------------------------------------


class _Proxy:
    """Delegates to the real store; subclasses corrupt one operation."""

    def __init__(self, store: SoftKeyStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _CorruptSigner(_Proxy):
    def sign(self, key: Any, data: bytes) -> bytes:
        sig = bytearray(self._store.sign(key, data))
        sig[len(sig) // 2] ^= 0x01
        return bytes(sig)


class _BadFirstDerivation(_Proxy):
    """The first derive_and_wrap of a card (the contact MK-AC) comes back damaged."""

    def __init__(self, store: SoftKeyStore, damage: str) -> None:
        super().__init__(store)
        self.damage, self.calls = damage, 0

    def derive_and_wrap(self, imk: Any, pan: str, psn: Any, method: Any, tk: Any) -> Any:
        self.calls += 1
        wrapped = self._store.derive_and_wrap(imk, pan, psn, method, tk)
        if self.calls != 1:
            return wrapped
        if self.damage == "wrap":  # one bit of the ciphertext under the TK flipped
            bad = bytearray(wrapped.ciphertext)
            bad[0] ^= 0x01
            return type(wrapped)(bytes(bad), wrapped.kcv, wrapped.kcv_method, tk)
        if self.damage == "other-key":  # the wrap of another card's MK-AC, this card's KCV
            other = self._store.derive_and_wrap(imk, "6234560000000000006", psn, method, tk)
            return type(wrapped)(other.ciphertext, wrapped.kcv, wrapped.kcv_method, tk)
        return type(wrapped)(wrapped.ciphertext, b"\x00\x00\x00", wrapped.kcv_method, tk)


@pytest.mark.parametrize("product", ["demo-visa-rsa", "demo-pboc-sm2"])
def test_corrupted_signature_is_rejected(store: SoftKeyStore, product: str) -> None:
    profile = load_product(product, CONFIG)
    record = (RSA_CARDS if product == "demo-visa-rsa" else PBOC_CARDS)[0]
    result = _preparer(_CorruptSigner(store), profile).prepare(record)
    assert isinstance(result, Reject)
    assert result.reason is RejectReason.SELF_CHECK_CERT and result.field == "9F46"
    assert result.line_no == record.line_no and result.product == product
    assert record.pan not in result.detail and result.masked_pan == record.masked_pan


@pytest.mark.parametrize("damage", ["wrap", "other-key", "kcv"])
@pytest.mark.parametrize("product", ["demo-visa-rsa", "demo-pboc-sm2"])
def test_kcv_disagreement_is_rejected(store: SoftKeyStore, product: str, damage: str) -> None:
    profile = load_product(product, CONFIG)
    record = (RSA_CARDS if product == "demo-visa-rsa" else PBOC_CARDS)[1]
    assert isinstance(_preparer(store, profile).prepare(record), PreparedCard)
    result = _preparer(_BadFirstDerivation(store, damage), profile).prepare(record)
    assert isinstance(result, Reject)
    assert result.reason is RejectReason.SELF_CHECK_KCV
    assert result.field == f"{profile.key_sets[0].name}.mk_ac"


def test_undecryptable_secret_is_rejected(store: SoftKeyStore, rsa_profile: ProductProfile) -> None:
    record = _card("4761739001010119", "01", secrets={"cvv": b"\x01" * 7})
    result = _preparer(store, rsa_profile).prepare(record)
    assert isinstance(result, Reject)
    assert result.reason is RejectReason.SENSITIVE_UNDECRYPTABLE and result.field == "cvv"


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"name": "\u00c9LISE/MARIE"}, RejectReason.NAME_CHARSET, "name"),
        ({"name": "X"}, RejectReason.NAME_LENGTH, "name"),
        ({"discretionary": "1" * 16}, RejectReason.FIELD_LENGTH, "discretionary"),
        ({"pan": "47617390010A0119"}, RejectReason.PAN_NOT_DIGITS, "pan"),
    ],
)
def test_bad_fields_become_rejects(
    store: SoftKeyStore, rsa_profile: ProductProfile, change: dict[str, Any], reason: RejectReason,
    field: str,
) -> None:  # fmt: skip
    fields = {"pan": "4761739001010119", "psn": "01"} | change
    result = _preparer(store, rsa_profile).prepare(_card(**fields))
    assert isinstance(result, Reject)
    assert (result.reason, result.field) == (reason, field)


def test_configuration_mismatches_fail_at_construction(
    store: SoftKeyStore, rsa_profile: ProductProfile
) -> None:
    data = yaml.safe_load((CONFIG / "products" / "demo-visa-rsa.yaml").read_text())
    wrong_ca = copy.deepcopy(data)
    wrong_ca["ca"]["index"] = "92"
    with pytest.raises(ConfigError, match="certified by A000000999/99"):
        _preparer(store, parse_product(wrong_ca))
    too_big = copy.deepcopy(data)
    too_big["icc_key"]["bits"] = 1472
    with pytest.raises(ConfigError, match="exceeds the issuer key"):
        _preparer(store, parse_product(too_big))
    pboc = yaml.safe_load((CONFIG / "products" / "demo-pboc-sm2.yaml").read_text())
    pboc["keys"]["issuer"] = "demo-issuer-rsa"
    pboc["ca"]["index"] = "99"
    with pytest.raises(ConfigError, match="is rsa, product needs sm2"):
        _preparer(store, parse_product(pboc))
    missing = copy.deepcopy(data)
    missing["keys"]["imk_ac"] = "no-such-imk"
    with pytest.raises(KeyStoreError):
        _preparer(store, parse_product(missing))


# --- store-side checks while translating, and the wrapped-key KCV -----------------


def test_translate_pin_block_format0_to_format2(store: SoftKeyStore) -> None:
    kek, tk = store.active("demo-kek"), store.active("demo-tk")
    pan = "4761739001010119"
    out = store.translate(
        KEK.encrypt_ecb(PIN_BLOCK_ISO0), kek, tk, check=TranslateCheck.PIN_ISO0_TO_ISO2, pan=pan
    )
    assert TK.decrypt_ecb(out) == PIN_BLOCK


@pytest.mark.parametrize(
    ("check", "plaintext", "error"),
    [
        (TranslateCheck.PIN_ISO0, _format0("341234", "4761739001010119"), InvalidInputError),
        (TranslateCheck.PIN_ISO0, _format0("021234", "4761739001010119"), InvalidInputError),
        (TranslateCheck.PIN_ISO0, _format0("04123A", "4761739001010119"), InvalidInputError),
        (TranslateCheck.PIN_ISO0_TO_ISO2, _format0("0412345", "4761739001010119"),
         InvalidInputError),
        (TranslateCheck.ISO9797_M2, b"\x31\x32\x33\x00\x00\x00\x00\x00", PaddingError),
    ],
)
def test_translate_refuses_bad_clear_format(
    store: SoftKeyStore, check: TranslateCheck, plaintext: bytes, error: type[Exception]
) -> None:
    kek, tk = store.active("demo-kek"), store.active("demo-tk")
    with pytest.raises(error) as info:
        store.translate(KEK.encrypt_ecb(plaintext), kek, tk, check=check, pan="4761739001010119")
    assert plaintext.hex() not in str(info.value).lower()


def test_translate_under_wrong_kek_is_refused(store: SoftKeyStore) -> None:
    """A field encrypted under another key decrypts to noise that fails the check."""
    wrong = BlockCipher(Algorithm.TDES, bytes.fromhex("00" * 8 + "FF" * 8))
    kek, tk = store.active("demo-kek"), store.active("demo-tk")
    refused = 0
    for pin in ("1234", "0000", "987654"):
        block = _format0(f"0{len(pin)}{pin}", "4761739001010119")
        with pytest.raises((InvalidInputError, PaddingError)):
            store.translate(
                wrong.encrypt_ecb(block), kek, tk, check=TranslateCheck.PIN_ISO0,
                pan="4761739001010119",
            )
        refused += 1
    assert refused == 3


def test_kcv_of_wrapped_matches_derivation(store: SoftKeyStore) -> None:
    imk, tk = store.active("demo-imk-ac"), store.active("demo-tk")
    wrapped = store.derive_and_wrap(imk, "4761739001010119", "01", DerivationMethod.OPTION_A, tk)
    assert store.kcv_of_wrapped(tk, wrapped.ciphertext, wrapped.kcv_method)[:3] == wrapped.kcv[:3]
    clear = TK.decrypt_ecb(wrapped.ciphertext)
    assert wrapped.kcv[:3] == kcv(clear, "tdes", 3)
    tampered = bytes([wrapped.ciphertext[0] ^ 1]) + wrapped.ciphertext[1:]
    assert store.kcv_of_wrapped(tk, tampered, wrapped.kcv_method)[:3] != wrapped.kcv[:3]


def test_kcv_of_wrapped_refuses_non_transport_keys(store: SoftKeyStore) -> None:
    with pytest.raises(KeyUsageError):
        store.kcv_of_wrapped(store.active("demo-imk-ac"), bytes(16), "tdes")


def test_check_encrypted_finds_bad_fields_without_translating(store: SoftKeyStore) -> None:
    kek = store.active("demo-kek")
    store.check_encrypted(KEK.encrypt_ecb(CVV), kek, check=TranslateCheck.ISO9797_M2)
    with pytest.raises(PaddingError):
        store.check_encrypted(
            KEK.encrypt_ecb(b"123\x00\x00\x00\x00\x00"), kek, check=TranslateCheck.ISO9797_M2
        )
    with pytest.raises(InvalidInputError, match="whole number"):
        store.check_encrypted(b"\x01" * 7, kek, check=TranslateCheck.ISO9797_M2)
    with pytest.raises(KeyUsageError):
        store.check_encrypted(KEK.encrypt_ecb(CVV), store.active("demo-imk-ac"),
                              check=TranslateCheck.ISO9797_M2)  # fmt: skip


@pytest.mark.parametrize("product", ["demo-visa-rsa", "demo-pboc-sm2"])
def test_static_data_plan_faults_still_reject_per_card(store: SoftKeyStore, product: str) -> None:
    """A product whose AFL names an ODA record it does not have gets no OdaPlan (built
    once per preparer): each card takes the 10.3 rule and is rejected by it, naming the AFL."""
    profile = load_product(product, CONFIG)
    record = (RSA_CARDS if product == "demo-visa-rsa" else PBOC_CARDS)[1]
    good = _preparer(store, profile)
    assert good._oda is not None  # the plan serves the demo products
    bad_afl = profile.afl + bytes([30 << 3, 1, 1, 1])  # SFI 30 record 1, an ODA record
    bad = _preparer(store, dataclasses.replace(profile, afl=bad_afl))
    assert bad._oda is None
    result = bad.prepare(record)
    assert isinstance(result, Reject)
    assert result.field == "afl"
    assert "ODA record 1E01 is not among the card's records" in result.detail
