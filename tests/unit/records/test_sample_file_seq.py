"""cardprep sample numbers its files: two samples are two deliveries (docs/INPUT.md "Deliveries").

Every sample used to carry the header file_seq 000001, so any two samples of
one issuer and batch date were the same delivery, and the duplicate-delivery
check would refuse the second (the reason a first attempt at it was reverted).
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.records.issuers import load_issuer
from pipeline.records.layout import load_layout
from pipeline.records.parse import verify_file
from pipeline.records.sample import default_file_seq, write_sample

CONFIG = Path(__file__).resolve().parents[3] / "config"
BATCH = date(2025, 1, 15)
ISSUERS = ["demo", "demo-csv", "demo-json"]


def _header(path: Path, issuer_id: str) -> dict[str, str]:
    layout = load_layout(load_issuer(issuer_id, CONFIG).layout, CONFIG)
    return dict(verify_file(path, layout).header)


def _sample(tmp_path: Path, issuer_id: str, name: str, **kw: Any) -> tuple[str, Path]:
    kw.setdefault("seed", 1)
    cards = int(kw.pop("cards", 5))
    s = write_sample(issuer_id, cards, tmp_path / name, batch_date=BATCH, config_dir=CONFIG, **kw)
    return s.file_seq, s.path


@pytest.mark.parametrize("issuer_id", ISSUERS)
def test_samples_drawn_differently_carry_different_file_seqs(
    tmp_path: Path, issuer_id: str
) -> None:
    seqs = {
        _sample(tmp_path, issuer_id, "a", seed=1)[0],
        _sample(tmp_path, issuer_id, "b", seed=2)[0],
        _sample(tmp_path, issuer_id, "c", seed=1, cards=6)[0],
        _sample(tmp_path, issuer_id, "d", seed=1, error_rate=0.5)[0],
    }
    assert len(seqs) == 4
    for name in "abcd":
        header = _header(tmp_path / name, issuer_id)
        assert header["file_seq"] in seqs
        assert header["file_seq"].isdigit() and len(header["file_seq"]) == 6
        assert int(header["file_seq"]) > 0
    assert "000001" not in seqs


@pytest.mark.parametrize("issuer_id", ISSUERS)
def test_the_same_arguments_still_give_the_same_bytes(tmp_path: Path, issuer_id: str) -> None:
    seq_a, a = _sample(tmp_path, issuer_id, "a", seed=7)
    seq_b, b = _sample(tmp_path, issuer_id, "b", seed=7)
    assert seq_a == seq_b == default_file_seq(issuer_id, 7, 5, 0.0)
    assert a.read_bytes() == b.read_bytes()
    expected = json.loads(a.with_name("a.expected.json").read_text())
    assert expected["file_seq"] == seq_a


@pytest.mark.parametrize("issuer_id", ISSUERS)
@pytest.mark.parametrize(("given", "written"), [("42", "000042"), (7, "000007"),
                                                ("000001", "000001")])  # fmt: skip
def test_an_explicit_file_seq_is_written_zero_padded(
    tmp_path: Path, issuer_id: str, given: str | int, written: str
) -> None:
    seq, path = _sample(tmp_path, issuer_id, "x", file_seq=given)
    assert seq == written == _header(path, issuer_id)["file_seq"]


# "\u0664\u0662" (Arabic-Indic 42) and "4\u00b2": str.isdigit() is true for them; the
# fixed-width writer then failed with a UnicodeEncodeError traceback
@pytest.mark.parametrize("bad", ["1234567", "12A", "", "-1", True, "\u0664\u0662", "4\u00b2"])
def test_a_file_seq_that_does_not_fit_the_field_is_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match=r"file_seq: must be 1\.\.6 digits"):
        _sample(tmp_path, "demo", "x", file_seq=bad)
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "x.expected.json").exists()


def _config_copy(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    return config


def test_an_issuer_config_fixing_the_sample_file_seq_is_refused(tmp_path: Path) -> None:
    """A fixed sample.header.file_seq is what made every sample one delivery."""
    config = _config_copy(tmp_path)
    issuer = config / "issuers" / "demo.yaml"
    doc = yaml.safe_load(issuer.read_text())
    doc["sample"]["header"]["file_seq"] = "000001"
    issuer.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"sample\.header\.file_seq: a fixed file sequence"):
        write_sample("demo", 3, tmp_path / "x.dat", seed=1, batch_date=BATCH, config_dir=config)


def test_a_layout_without_file_seq_gets_none(tmp_path: Path) -> None:
    config = _config_copy(tmp_path)
    layout = config / "layouts" / "demo-csv.yaml"
    doc = yaml.safe_load(layout.read_text())
    doc["header"]["fields"] = [f for f in doc["header"]["fields"] if f["name"] != "file_seq"]
    layout.write_text(yaml.safe_dump(doc))
    s = write_sample("demo-csv", 3, tmp_path / "x.csv", seed=1, batch_date=BATCH,
                     config_dir=config)  # fmt: skip
    assert s.file_seq == ""
    assert s.path.read_bytes().startswith(b"H,DEMO,20250115\n")
    with pytest.raises(ConfigError, match="has no header field 'file_seq'"):
        write_sample("demo-csv", 3, tmp_path / "y.csv", seed=1, batch_date=BATCH,
                     config_dir=config, file_seq="5")  # fmt: skip


def test_cli_file_seq(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``cardprep sample --file-seq`` writes the operator's number into the header."""
    from pipeline.cli.main import main  # noqa: PLC0415

    out = tmp_path / "seq.dat"
    rc = main(["sample", "--issuer", "demo", "--cards", "3", "--seed", "1", "--file-seq", "42",
               "--out", str(out), "--batch-date", "2025-01-15",
               "--config-dir", str(CONFIG)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert _header(out, "demo")["file_seq"] == "000042"
    assert main(["sample", "--issuer", "demo", "--cards", "3", "--file-seq", "12A",
                 "--out", str(tmp_path / "bad.dat"), "--config-dir", str(CONFIG)]) == 2  # fmt: skip
    assert "file_seq" in capsys.readouterr().err
