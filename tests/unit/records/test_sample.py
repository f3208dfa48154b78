"""cardprep sample: the file it writes verifies, parses and validates to exactly the
expected rejects, its secrets decrypt under the demo KEK, and nothing leaks a PAN.

Secrets are checked with independent code: `cryptography`'s TripleDES directly
(not pipeline.crypto) and psec's ISO 9564 format 0 decoder.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import date
from pathlib import Path

import psec.pinblock
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli.main import main
from pipeline.errors import ConfigError
from pipeline.records.issuers import load_issuer
from pipeline.records.layout import load_layout
from pipeline.records.parse import iter_records, verify_file
from pipeline.records.reasons import RejectReason
from pipeline.records.sample import pin_block_format0, write_sample
from pipeline.records.validate import CardRecord, Reject, Validator
from tests.conftest import load_vectors
from tests.unit.records.test_luhn import naive_luhn_valid

KEK = bytes.fromhex("0123456789ABCDEF1032547698BADCFE")  # demo-kek, config/demo/keys.yaml
BATCH = date(2025, 3, 10)
ISSUERS = ["demo", "demo-csv", "demo-json"]


def _decrypt(data: bytes) -> bytes:
    d = Cipher(TripleDES(KEK + KEK[:8]), modes.ECB()).decryptor()
    return d.update(data) + d.finalize()


def _unpad(data: bytes) -> bytes | None:
    stripped = data.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(data) - len(stripped) >= 8:
        return None
    return stripped[:-1]


def _run(path: Path, issuer_id: str) -> tuple[list[CardRecord], list[Reject]]:
    issuer = load_issuer(issuer_id)
    layout = load_layout(issuer.layout)
    summary = verify_file(path, layout)
    assert summary.batch_date == BATCH
    v = Validator(issuer, layout, BATCH)
    good: list[CardRecord] = []
    bad: list[Reject] = []
    for raw in iter_records(path, layout):
        r = v.check(raw)
        (good if isinstance(r, CardRecord) else bad).append(r)  # type: ignore[arg-type]
    assert len(good) + len(bad) == summary.record_count
    return good, bad


@pytest.mark.parametrize("issuer_id", ISSUERS)
def test_round_trip_with_every_error_kind(tmp_path: Path, issuer_id: str) -> None:
    s = write_sample(issuer_id, 400, tmp_path / "in", error_rate=0.1, seed=11, batch_date=BATCH)
    good, bad = _run(s.path, issuer_id)
    assert {r.line_no: r.reason.code for r in bad} == dict(s.expected_rejects)
    assert len(good) == s.valid == s.records - len(s.expected_rejects)
    assert Counter(c.product for c in good) == Counter(s.per_product)
    injected = {k.split()[0] for k in s.injected}
    validate_codes = {r.value for r in RejectReason if r.stage == "validate"}
    not_injected = {"R041"}  # needs a product list; covered in test_validate.py
    if issuer_id == "demo":
        not_injected.add("R066")  # fixed width has no syntax of its own
    assert injected == (validate_codes - not_injected) | {"R071"}
    assert Counter(s.expected_rejects.values())["R050"] >= 2
    # R071 lines pass validation; their CVV does not decrypt to a padded value.
    by_line = {c.line_no: c for c in good}
    for line_no in s.expected_prepare_rejects:
        assert _unpad(_decrypt(by_line[line_no].secrets["cvv"])) is None


@pytest.mark.parametrize("issuer_id", ISSUERS)
def test_clean_sample_is_all_valid_and_secrets_decrypt(tmp_path: Path, issuer_id: str) -> None:
    s = write_sample(issuer_id, 300, tmp_path / "in", seed=5, batch_date=BATCH)
    good, bad = _run(s.path, issuer_id)
    assert bad == [] and not s.expected_rejects and not s.injected
    lengths = Counter(len(c.pan) for c in good)
    assert set(lengths) == {16, 19}
    assert {c.psn is None for c in good} == {True, False}
    assert {c.kdd is None for c in good} == {True, False}
    assert {"pin_block" in c.secrets for c in good} == {True, False}
    for c in good:
        assert naive_luhn_valid(c.pan)
        assert c.expiry > "2503" and c.service_code[0] in "1256"
        for name in ("cvv", "icvv"):
            clear = _unpad(_decrypt(c.secrets[name]))
            assert clear is not None and re.fullmatch(rb"\d{3}", clear)
        if "pin_block" in c.secrets:
            pin = psec.pinblock.decode_pinblock_iso_0(_decrypt(c.secrets["pin_block"]), c.pan)
            assert pin.isdigit() and len(pin) in (4, 6)


def test_same_seed_same_file(tmp_path: Path) -> None:
    a = write_sample("demo", 50, tmp_path / "a", error_rate=0.3, seed=3, batch_date=BATCH)
    b = write_sample("demo", 50, tmp_path / "b", error_rate=0.3, seed=3, batch_date=BATCH)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.expected_rejects == b.expected_rejects


_PAN_LIKE = re.compile(rb"(?<!\d)\d{13,19}(?!\d)")


def test_expected_file_has_no_pan(tmp_path: Path) -> None:
    s = write_sample("demo", 200, tmp_path / "in", error_rate=0.2, seed=9, batch_date=BATCH)
    data = s.expected_path.read_bytes()
    assert not [m for m in _PAN_LIKE.findall(data) if naive_luhn_valid(m.decode())]
    doc = json.loads(data)
    assert doc["records"] == 200 and doc["valid"] == s.valid
    assert {int(k): v for k, v in doc["expected_rejects"].items()} == dict(s.expected_rejects)
    assert set(doc["expected_prepare_rejects"].values()) == {"R071"}


@pytest.mark.parametrize("vector", load_vectors("pin_block")["vectors"])
def test_pin_block_vectors(vector: dict[str, str]) -> None:
    assert pin_block_format0(vector["pin"], vector["pan"]).hex().upper() == vector["pin_block"]


@settings(max_examples=200)
@given(pin=st.text("0123456789", min_size=4, max_size=12),
       pan=st.text("0123456789", min_size=13, max_size=19))
def test_pin_block_agrees_with_psec(pin: str, pan: str) -> None:
    assert pin_block_format0(pin, pan) == psec.pinblock.encode_pinblock_iso_0(pin, pan)


def test_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_sample("demo", 0, tmp_path / "x")
    with pytest.raises(ConfigError):
        write_sample("demo", 5, tmp_path / "x", error_rate=1.5)
    with pytest.raises(ConfigError):
        write_sample("nope", 5, tmp_path / "x")


def test_refuses_keys_not_marked_test_only(tmp_path: Path) -> None:
    config = tmp_path / "config"
    for sub in ("issuers", "layouts"):
        (config / sub).mkdir(parents=True)
    (config / "issuers" / "demo.yaml").write_text(Path("config/issuers/demo.yaml").read_text())
    (config / "layouts" / "demo-fixed.yaml").write_text(
        Path("config/layouts/demo-fixed.yaml").read_text())
    (config / "demo").mkdir()
    keys = Path("config/demo/keys.yaml").read_text().replace("test_only: true", "test_only: no")
    (config / "demo" / "keys.yaml").write_text(keys)
    with pytest.raises(ConfigError, match="test_only"):
        write_sample("demo", 5, tmp_path / "x", config_dir=config)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.dat"
    rc = main(["sample", "--issuer", "demo", "--cards", "60", "--errors", "0.5", "--seed", "2",
               "--out", str(out), "--batch-date", "2025-03-10"])
    assert rc == 0
    text = capsys.readouterr().out
    assert str(out) in text and "demo-visa-rsa" in text and "R050 DUPLICATE_CARD" in text
    assert not _PAN_LIKE.search(text.encode())
    assert (tmp_path / "cli.dat.expected.json").exists()
    good, bad = _run(out, "demo")
    assert len(good) + len(bad) == 60


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", "--issuer", "nope", "--cards", "5", "--out", str(tmp_path / "x")]) == 2
    assert "cardprep: error" in capsys.readouterr().err
