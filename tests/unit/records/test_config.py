"""Layouts and issuer configs: the demo files load, and every broken rule is a ConfigError."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.records.issuers import load_issuer, parse_issuer
from pipeline.records.layout import FileFormat, load_layout, parse_layout

CONFIG = Path("config")


def _raw(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CONFIG / "layouts" / f"{name}.yaml").read_text())
    return data


@pytest.mark.parametrize(("name", "fmt"), [("demo-fixed", FileFormat.FIXED),
                                           ("demo-csv", FileFormat.CSV),
                                           ("demo-json", FileFormat.JSON)])
def test_demo_layouts_load(name: str, fmt: FileFormat) -> None:
    lay = load_layout(name)
    assert lay.format is fmt
    assert {f.name for f in lay.secret_fields} == {"pin_block", "cvv", "icvv"}
    assert lay.detail.field("pan").required


def test_fixed_positions_match_docs() -> None:
    """docs/INPUT.md table: 1-based start and length of every demo-fixed detail field."""
    expected = {
        "pan": (2, 19), "psn": (21, 2), "expiry": (23, 4), "effective": (27, 4),
        "service_code": (31, 3), "name": (34, 26), "discretionary": (60, 13),
        "kdd": (73, 20), "pin_block": (93, 16), "cvv": (109, 16), "icvv": (125, 16),
        "customer_ref": (141, 20),
    }
    lay = load_layout("demo-fixed")
    assert {f.name: (f.start, f.length) for f in lay.detail.fields} == expected
    assert lay.record_length == 160


def _mutate(name: str, path: list[Any], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(_raw(name))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


BROKEN = [
    ("demo-fixed", ["format"], "xml", "format"),
    ("demo-fixed", ["encoding"], "ebcdic", "encoding"),
    ("demo-fixed", ["record_length"], ..., "record_length"),
    ("demo-fixed", ["detail", "fields", 1, "start"], 10, "overlaps"),
    ("demo-fixed", ["detail", "fields", 11, "length"], 30, "beyond"),
    ("demo-fixed", ["detail", "fields", 0, "type"], "digits", "pan.type"),
    ("demo-fixed", ["detail", "fields", 0, "type"], "float", "unknown type"),
    ("demo-fixed", ["detail", "fields", 9, "type"], "ans", "secret fields"),
    ("demo-fixed", ["detail", "fields", 9, "padding"], "pkcs7", "padding"),
    ("demo-fixed", ["detail", "fields", 1, "colour"], "red", "unknown key"),
    ("demo-fixed", ["detail", "marker"], "DD", "marker"),
    ("demo-fixed", ["trailer", "marker"], "H", "markers must differ"),
    ("demo-fixed", ["hash_total", "method"], "crc32", "method"),
    ("demo-fixed", ["hash_total", "digits"], 12, "digits"),
    ("demo-fixed", ["count_field"], "nope", "count_field"),
    ("demo-fixed", ["batch_date_field"], "nope", "batch_date_field"),
    ("demo-csv", ["detail", "fields", 1, "column"], 2, "share a column"),
    ("demo-csv", ["delimiter"], ";;", "delimiter"),
    ("demo-json", ["detail", "fields", 0, "key"], 5, "string key"),
    ("demo-json", ["surprise"], 1, "unknown key"),
]


@pytest.mark.parametrize(("name", "path", "value", "message"), BROKEN)
def test_broken_layouts(name: str, path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_layout(_mutate(name, path, value), source="test.yaml")


def test_layout_missing_required_detail_field() -> None:
    data = _raw("demo-csv")
    data["detail"]["fields"] = [f for f in data["detail"]["fields"] if f["name"] != "name"]
    with pytest.raises(ConfigError, match="'name'"):
        parse_layout(data)


def test_unknown_layout_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_layout("nope", tmp_path)
    with pytest.raises(ConfigError, match="invalid layout name"):
        load_layout("../etc/passwd")


def test_issuers_load() -> None:
    for issuer_id, layout in (("demo", "demo-fixed"), ("demo-csv", "demo-csv"),
                              ("demo-json", "demo-json")):
        cfg = load_issuer(issuer_id)
        assert cfg.layout == layout and cfg.kek == "demo-kek" and cfg.kek_block_size == 8
        assert cfg.products == {"demo-visa-rsa", "demo-pboc-sm2"}
        assert cfg.header_issuer_id == "DEMO"  # what the demo files' headers say


def test_longest_prefix_wins() -> None:
    cfg = parse_issuer({"id": "x", "layout": "demo-fixed", "kek": "k", "bureau": "b",
                        "bins": {"4": "generic", "476173": "specific", "47617399": "narrow"}})
    assert cfg.product_for_pan("4761739001010119") == "specific"
    assert cfg.product_for_pan("4761739901010119") == "narrow"
    assert cfg.product_for_pan("4000000000000002") == "generic"
    assert cfg.product_for_pan("5000000000000009") is None


@pytest.mark.parametrize(("changes", "message"), [
    ({"bins": {476173: "p"}}, "quoted digit string"),
    ({"bins": {"47A": "p"}}, "quoted digit string"),
    ({"bins": {}}, "non-empty"),
    ({"bins": {"4": "Bad Product"}}, "invalid product"),
    ({"kek_algorithm": "rc4"}, "kek_algorithm"),
    ({"retention_days": 0}, "retention_days"),
    ({"id": "Demo"}, "invalid issuer id"),
    ({"kek": ""}, "kek"),
    ({"extra": 1}, "unknown key"),
    ({"header_issuer_id": ""}, "header_issuer_id"),
    ({"header_issuer_id": 7}, "header_issuer_id"),
])
def test_broken_issuers(changes: dict[str, Any], message: str) -> None:
    base = {"id": "x", "layout": "demo-fixed", "kek": "k", "bureau": "b", "bins": {"4": "p"}}
    with pytest.raises(ConfigError, match=message):
        parse_issuer({**base, **changes})


def test_issuer_file_name_must_match_id(tmp_path: Path) -> None:
    (tmp_path / "issuers").mkdir()
    (tmp_path / "issuers" / "abc.yaml").write_text(
        "id: xyz\nlayout: l\nkek: k\nbureau: b\nbins: {'4': p}\n")
    with pytest.raises(ConfigError, match="file is named"):
        load_issuer("abc", tmp_path)
