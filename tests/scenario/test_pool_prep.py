"""Scenario: cards of a pool product prepared with keys from the ICC key pool.

The demo RSA product with ``icc_key.source: pool``; the pool is filled under
the store's pool key, the cards take their keys through ``PoolIccSource``
given to ``CardPreparer`` as its ``icc_source``.
Checked independently: the CRT DGIs 8201..8205 decrypt under the clear TEST
TK (config/demo/keys.yaml, with ``cryptography``) to p, q whose product is the
modulus the ICC certificate certifies (recovered with plain ``pow`` under the
issuer public key); each card's key is a different pool entry, marked used
after settling; a dry pool falls back to inline generation, or stops the
shard with KeyPoolEmptyError when the policy says fail.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from pipeline.errors import ConfigError, KeyPoolEmptyError
from pipeline.keys.demo import init_demo_store
from pipeline.keys.pool import ClaimTag, DryPolicy, KeyPool, PoolIccSource, PoolSpec, fill
from pipeline.keys.soft import SoftKeyStore
from pipeline.prep import CardPreparer, PreparedCard, PreparerKeys
from pipeline.profiles import load_product
from pipeline.profiles.model import IccKeySource, ProductProfile
from pipeline.records.validate import CardRecord

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
TK = {k["label"]: bytes.fromhex(str(k["value"])) for k in yaml.safe_load(
    (CONFIG / "demo" / "keys.yaml").read_text())["keys"]}["demo-tk"]  # fmt: skip
SPEC = PoolSpec.of("rsa", 1152, 3)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftKeyStore]:
    path = tmp_path_factory.mktemp("pool-prep")
    s = init_demo_store(path / "keys.db", CONFIG / "demo" / "keys.yaml",
                        passphrase_file=CONFIG / "demo" / "hmk-passphrase.txt",
                        audit_path=path / "audit.jsonl")  # fmt: skip
    yield s
    s.close()


@pytest.fixture(scope="module")
def profile() -> ProductProfile:
    base = load_product("demo-visa-rsa", CONFIG)
    return dataclasses.replace(
        base, icc_key=dataclasses.replace(base.icc_key, source=IccKeySource.POOL)
    )


def _preparer(
    store: SoftKeyStore, profile: ProductProfile, source: PoolIccSource | None
) -> CardPreparer:
    keys = PreparerKeys.resolve(store, profile, kek="demo-kek", pan_token="demo-pan-token")
    return CardPreparer(profile, store, keys, icc_source=source)


def _card(pan: str, line: int) -> CardRecord:
    return CardRecord(line_no=line, product="demo-visa-rsa", pan=pan, psn="01", expiry="2812",
                      effective="2301", service_code="201", name="DOE/JOHN",
                      discretionary="0000", kdd=None, secrets={}, extra={})  # fmt: skip


PANS = ["4761739001010119", "4761731234567890", "4761730000000000003"]


def _tdes(data: bytes) -> bytes:
    dec = Cipher(TripleDES(TK + TK[:8]), modes.ECB()).decryptor()
    return dec.update(data) + dec.finalize()


def _recovered_icc_modulus(store: SoftKeyStore, card: PreparedCard) -> bytes:
    issuer = store.get(store.active("demo-issuer-rsa"))
    assert issuer.public_key is not None and issuer.public_exponent is not None
    n = int.from_bytes(issuer.public_key, "big")
    e = int.from_bytes(issuer.public_exponent, "big")
    records = b"".join(d.value for d in card.dgis if d.id < 0x8000 and not d.encrypted)
    cert = records[records.index(b"\x9f\x46\x81") + 4 :][: len(issuer.public_key)]
    rem_at = records.index(b"\x9f\x48")
    remainder = records[rem_at + 3 : rem_at + 3 + records[rem_at + 2]]
    plain = pow(int.from_bytes(cert, "big"), e, n).to_bytes(len(issuer.public_key), "big")
    assert plain[:2] == b"\x6a\x04" and plain[-1:] == b"\xbc"
    length = plain[19]
    return (plain[21 : len(plain) - 21] + remainder)[:length]


def test_pool_cards_carry_distinct_pool_keys_matching_their_certificates(
    store: SoftKeyStore, profile: ProductProfile, tmp_path: Path
) -> None:
    tk = store.active("demo-tk")
    with KeyPool(tmp_path / "keypool.db") as pool:
        fill(store, pool, SPEC, tk, 4, actor="ops", workers=1)
        source = PoolIccSource(pool, store, ClaimTag("b", "0"), on_empty=DryPolicy.FAIL)
        preparer = _preparer(store, profile, source)
        cards = [preparer.prepare(_card(pan, i)) for i, pan in enumerate(PANS, start=2)]
        assert all(isinstance(c, PreparedCard) for c in cards), cards
        assert source.stats() == {"claimed": 4, "handed": 3, "inline": 0}
        moduli = set()
        for card in cards:
            assert isinstance(card, PreparedCard)
            qinv, _dq, dp, q, p = (
                int.from_bytes(_tdes(card.dgi(d).value), "big")  # type: ignore[union-attr]
                for d in (0x8201, 0x8202, 0x8203, 0x8204, 0x8205)
            )
            modulus = _recovered_icc_modulus(store, card)
            assert p * q == int.from_bytes(modulus, "big") and len(modulus) == 144
            assert qinv * q % p == 1 and pow(pow(7, 3, p), dp, p) == 7
            assert card.icc_public_key_sha256 == hashlib.sha256(modulus).hexdigest()
            moduli.add(modulus)
        assert len(moduli) == 3
        hashes = [c.icc_public_key_sha256 for c in cards if isinstance(c, PreparedCard)]
        assert source.close() == 1  # the fourth entry was never handed out: free again
        assert pool.settle("b", "0", hashes) == {"used": 3, "burned": 0}
        assert isinstance(preparer.prepare(_card(PANS[0], 8)), PreparedCard)  # takes it
        with pytest.raises(KeyPoolEmptyError):  # dry + fail: the shard stops
            preparer.prepare(_card(PANS[1], 9))
        assert source.stats() == {"claimed": 5, "handed": 4, "inline": 0}


def test_dry_pool_generates_inline_by_default(
    store: SoftKeyStore, profile: ProductProfile, tmp_path: Path
) -> None:
    with KeyPool(tmp_path / "keypool.db") as pool:
        source = PoolIccSource(pool, store, ClaimTag("b", "0"))
        card = _preparer(store, profile, source).prepare(_card(PANS[0], 2))
        assert isinstance(card, PreparedCard) and source.stats()["inline"] == 1


def test_pool_profile_without_a_source_is_refused(
    store: SoftKeyStore, profile: ProductProfile
) -> None:
    with pytest.raises(ConfigError) as err:
        _preparer(store, profile, None)
    assert err.value.field.endswith("icc_key.source")


def test_inline_profile_ignores_a_pool_source(store: SoftKeyStore, tmp_path: Path) -> None:
    with KeyPool(tmp_path / "keypool.db") as pool:
        source = PoolIccSource(pool, store, ClaimTag("b", "0"), on_empty=DryPolicy.FAIL)
        inline = load_product("demo-visa-rsa", CONFIG)
        card = _preparer(store, inline, source).prepare(_card(PANS[0], 2))
        assert isinstance(card, PreparedCard) and source.stats()["claimed"] == 0
