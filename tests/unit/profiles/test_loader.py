"""Product profile loading and validation (docs/PROFILES.md).

The two demo profiles must load; every validation rule is exercised by a
negative test that mutates a copy of the demo YAML and expects a ConfigError
naming the file and the field.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.keys.model import DerivationMethod
from pipeline.profiles import load_product, parse_product
from pipeline.profiles.model import DryPolicy, IccKeyAlgorithm, IccKeySource, Scheme

CONFIG = Path(__file__).resolve().parents[3] / "config"


def _raw(product: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CONFIG / "products" / f"{product}.yaml").read_text())
    return data


def test_demo_rsa_profile() -> None:
    p = load_product("demo-visa-rsa", CONFIG)
    assert (p.scheme, p.derivation, p.version) == (Scheme.EMV, DerivationMethod.OPTION_A, 1)
    assert p.icc_key.algorithm is IccKeyAlgorithm.RSA
    assert (p.icc_key.bits, p.icc_key.exponent) == (1152, 3)
    assert p.icc_key.dgis == (0x8201, 0x8202, 0x8203, 0x8204, 0x8205)
    assert [(k.dgi, k.kcv_dgi) for k in p.key_sets] == [(0x8000, 0x9000), (0x8001, 0x9001)]
    assert p.afl.hex().upper() == "080101001001010118010300"
    assert (p.ca.rid.hex().upper(), p.ca.index.hex()) == ("A000000999", "99")
    assert p.constant(b"\x5f\x28") == b"\x08\x40"
    assert p.constant(b"\x9f\x99") is None
    assert p.pin is not None and (p.pin.dgi, p.pin.try_dgi, p.pin.try_limit) == (0x8010, 0x9010, 3)
    assert 0x8000 in p.encrypted_dgis and 0x9000 not in p.encrypted_dgis
    assert [g.dgi for g in p.gpo] == [0x9104, 0x9103]
    assert pickle.loads(pickle.dumps(p)) == p
    assert hash(p) == hash(pickle.loads(pickle.dumps(p)))


def test_demo_pboc_profile() -> None:
    p = load_product("demo-pboc-sm2", CONFIG)
    assert (p.scheme, p.derivation) == (Scheme.PBOC, DerivationMethod.SM4)
    assert p.icc_key.algorithm is IccKeyAlgorithm.SM2 and p.icc_key.dgis == (0x8100,)
    assert p.tk == "demo-tk-sm4"
    assert p.encrypted_dgis == frozenset({0x8000, 0x8100})
    assert p.key_labels()["contact.imk_ac"] == "demo-sm4-imk-ac"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no profile file"):
        load_product("nope", CONFIG)
    (tmp_path / "products").mkdir()
    (tmp_path / "products" / "bad.yaml").write_text("id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_product("bad", tmp_path)


def test_id_must_match_file_name(tmp_path: Path) -> None:
    (tmp_path / "products").mkdir()
    (tmp_path / "products" / "other.yaml").write_text(yaml.safe_dump(_raw("demo-visa-rsa")))
    with pytest.raises(ConfigError, match=r"other\.yaml: id"):
        load_product("other", tmp_path)


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last: Any = int(parts[-1]) if isinstance(node, list) else parts[-1]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()

RSA_CASES: list[tuple[str, Mutation, str]] = [
    ("unknown top key", _set("colour", "blue"), r"\(top level\): unknown key\(s\) colour"),
    ("missing aid", _set("aid", _DELETE), "aid: is required"),
    ("unquoted dgi", _set("key_sets.0.dgi", 8000), "key_sets\\[0\\].dgi: expected a DGI"),
    ("octal record dgi", _set("pin.dgi", 65), "pin.dgi"),
    ("bad scheme", _set("scheme", "visa"), "scheme: 'visa' is not one of"),
    ("kmc method not gp", _set("kmc.method", "A"), "kmc.method: A is not a KMC"),
    ("card derivation gp", _set("derivation", "emv"), "derivation: emv is not a card key"),
    ("exponent 5", _set("icc_key.exponent", 5), "icc_key.exponent: 5 is not 3 or 65537"),
    ("bits not bytes", _set("icc_key.bits", 1150), "icc_key.bits: 1150 is not a whole number"),
    ("bits too large", _set("icc_key.bits", 2048), "icc_key.bits: expected an integer"),
    ("sm2 in emv", _set("icc_key.algorithm", "sm2"), "icc_key.algorithm: an SM2 ICC key"),
    ("crt dgis", _set("icc_key.dgis", ["8201"]), "RSA needs 5 CRT DGIs"),
    ("pool source unknown", _set("icc_key.source", "cloud"), "icc_key.source"),
    ("duplicate dgi", _set("pin.dgi", "8000"), "pin.dgi: DGI 8000 already used by key_sets"),
    ("record dgi clash", _set("secret_dgis.cvv", "0101"), "DGI 0101 already used by records"),
    (
        "tag without source",
        _set("records.0.tags", ["57", "5F20", "9F1B"]),
        "tag 9F1B has no source",
    ),
    ("tag twice", _set("records.0.tags", ["57", "5F20", "5A"]), "tag 5A already in records\\[0\\]"),
    ("record twice", _set("records.1.sfi", 1), "record 0101 listed twice"),
    (
        "unused constant",
        _set("constants.9F1A", "0840"),
        "constants: not placed in any record: 9F1A",
    ),
    ("computed constant", _set("constants.5A", "4761"), "constants.5A: is computed per card"),
    ("bad tag", _set("constants.9F", "00"), "constants.9F: not a well-formed BER tag"),
    ("not hex", _set("aip", "3X00"), "aip: not hex"),
    ("aip length", _set("aip", "3C"), "aip: 1 bytes, expected 2..2"),
    ("afl mismatch", _set("afl", "08010100"), "afl: 08010100 disagrees with the records"),
    ("sda list not aip", _set("sda_tag_list", "9F36"), "sda_tag_list: may contain only tag 82"),
    ("9F4A without list", _set("sda_tag_list", _DELETE), "sda_tag_list: set it exactly when"),
    ("cert in oda record", _set("records.4.oda", True), "9F46 cannot be in an ODA record"),
    ("no oda record", _set("records.1.oda", False), "no record is marked oda"),
    ("needs 9F46", _set("records.4.tags", ["9F47", "9F48"]), "needs tags 9F46"),
    ("oda not bool", _set("records.1.oda", "yes"), "records\\[1\\].oda: expected true or false"),
    ("sfi range", _set("records.0.sfi", 31), "records\\[0\\].sfi: expected an integer 1..30"),
    ("bad label", _set("keys.tk", "demo tk"), "keys.tk: invalid key label"),
    ("try limit", _set("pin.try_limit", 0), "pin.try_limit: expected an integer 1..15"),
    ("text value", _set("select.tags.50", {"text": "caf\u00e9"}), "only printable ASCII"),
    ("cert expiry", _set("certificate.expiry", "issuer"), "certificate.expiry: only 'card'"),
    ("dup key set", _set("key_sets.1.name", "contact"), "duplicate key set names"),
    ("version", _set("version", 0), "version: expected an integer"),
]


@pytest.mark.parametrize(("name", "mutate", "match"), RSA_CASES, ids=[c[0] for c in RSA_CASES])
def test_rsa_profile_rule(name: str, mutate: Mutation, match: str) -> None:
    data = copy.deepcopy(_raw("demo-visa-rsa"))
    mutate(data)
    with pytest.raises(ConfigError, match=match) as info:
        parse_product(data, source="demo-visa-rsa.yaml")
    assert str(info.value).startswith("demo-visa-rsa.yaml: ")


PBOC_CASES: list[tuple[str, Mutation, str]] = [
    ("rsa tag in sm2", _set("records.2.tags", ["8F", "90", "9F32"]), "9F32 does not exist for SM2"),
    (
        "rsa in pboc",
        _set(
            "icc_key",
            {
                "algorithm": "rsa",
                "bits": 1024,
                "exponent": 3,
                "dgis": ["8201", "8202", "8203", "8204", "8205"],
            },
        ),
        "an RSA ICC key needs scheme emv",
    ),
    ("sm2 exponent", _set("icc_key.exponent", 3), "SM2 takes no exponent"),
    ("sm2 dgis", _set("icc_key.dgis", ["8100", "8101"]), "SM2 needs one private key DGI"),
]


@pytest.mark.parametrize(("name", "mutate", "match"), PBOC_CASES, ids=[c[0] for c in PBOC_CASES])
def test_pboc_profile_rule(name: str, mutate: Mutation, match: str) -> None:
    data = copy.deepcopy(_raw("demo-pboc-sm2"))
    mutate(data)
    with pytest.raises(ConfigError, match=match):
        parse_product(data, source="demo-pboc-sm2.yaml")


def test_vendor_dgi_numbers_come_from_the_profile() -> None:
    data = copy.deepcopy(_raw("demo-pboc-sm2"))
    data["key_sets"][0].update(dgi="8030", kcv_dgi="9030")
    data["icc_key"]["dgis"] = ["8701"]
    p = parse_product(data)
    assert p.encrypted_dgis == frozenset({0x8030, 0x8701})


def test_key_set_overrides_imks_and_derivation() -> None:
    data = copy.deepcopy(_raw("demo-visa-rsa"))
    data["key_sets"][1].update(imk_ac="other-imk", derivation="B")
    p = parse_product(data)
    assert p.key_sets[1].imk_ac == "other-imk"
    assert p.key_sets[1].derivation is DerivationMethod.OPTION_B
    assert p.key_sets[0].derivation is DerivationMethod.OPTION_A


def _pool_product(product: str, **icc_key: Any) -> dict[str, Any]:
    """A copy of a demo profile switched to ``icc_key.source: pool`` plus ``icc_key`` fields."""
    data = copy.deepcopy(_raw(product))
    data["icc_key"].update({"source": "pool", **icc_key})
    return data


@pytest.mark.parametrize(
    ("product", "icc_key", "policy"),
    [
        ("demo-visa-rsa", {}, DryPolicy.INLINE),
        ("demo-visa-rsa", {"pool_empty": "inline"}, DryPolicy.INLINE),
        ("demo-visa-rsa", {"pool_empty": "fail"}, DryPolicy.FAIL),
        ("demo-pboc-sm2", {"pool_empty": "fail"}, DryPolicy.FAIL),
    ],
    ids=["rsa default", "rsa inline", "rsa fail", "sm2 fail"],
)
def test_pool_empty_policy(product: str, icc_key: dict[str, str], policy: DryPolicy) -> None:
    p = parse_product(_pool_product(product, **icc_key), source=f"{product}.yaml")
    assert (p.icc_key.source, p.icc_key.pool_empty) == (IccKeySource.POOL, policy)
    assert pickle.loads(pickle.dumps(p)) == p


def test_demo_profiles_keep_inline_keys_and_the_default_policy() -> None:
    for product in ("demo-visa-rsa", "demo-pboc-sm2"):
        icc_key = load_product(product, CONFIG).icc_key
        assert (icc_key.source, icc_key.pool_empty) == (IccKeySource.INLINE, DryPolicy.INLINE)


POOL_EMPTY_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "bad value",
        {"pool_empty": "wait"},
        r"icc_key\.pool_empty: 'wait' is not one of inline, fail",
    ),
    ("boolean", {"pool_empty": False}, r"icc_key\.pool_empty: False is not one of inline, fail"),
    ("empty", {"pool_empty": None}, r"icc_key\.pool_empty: None is not one of"),
    (
        "inline source",
        {"source": "inline", "pool_empty": "fail"},
        r"icc_key\.pool_empty: applies only to source: pool \(source is inline\)",
    ),
    (
        "inline source, inline policy",
        {"source": "inline", "pool_empty": "inline"},
        r"icc_key\.pool_empty: applies only to source: pool",
    ),
]


@pytest.mark.parametrize(
    ("name", "icc_key", "match"), POOL_EMPTY_CASES, ids=[c[0] for c in POOL_EMPTY_CASES]
)
def test_pool_empty_rule(name: str, icc_key: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_product(_pool_product("demo-visa-rsa", **icc_key), source="demo-visa-rsa.yaml")
    assert info.value.field == "demo-visa-rsa.yaml: icc_key.pool_empty"


def test_pool_empty_without_a_source_is_refused() -> None:
    """``source`` defaults to inline, so a lone ``pool_empty`` names no pool."""
    data = copy.deepcopy(_raw("demo-pboc-sm2"))
    data["icc_key"].pop("source", None)
    data["icc_key"]["pool_empty"] = "fail"
    with pytest.raises(ConfigError, match=r"pool_empty: applies only to source: pool"):
        parse_product(data, source="demo-pboc-sm2.yaml")
