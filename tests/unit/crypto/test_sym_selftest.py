"""``cardprep selftest`` and the docstring examples of the symmetric crypto modules."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest
import yaml

from pipeline.cli import selftest
from pipeline.cli.main import main
from pipeline.errors import ConfigError

MODULES = ["ciphers", "padding", "mac", "kcv", "emv", "gp", "tr31"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"pipeline.crypto.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_selftest_passes_and_prints_only_kcvs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["selftest"]) == 0
    out = capsys.readouterr().out
    doc = yaml.load(selftest.DEFAULT_KEYS.read_text(), Loader=yaml.BaseLoader)
    for entry in doc["keys"]:
        assert entry["label"] in out
        assert entry["value"].upper() not in out.upper()
        assert entry["value"][:12].upper() not in out.upper()
    assert "demo-imk-ac          tdes      E0    08D7B4 tdes" in out  # published KCV
    # SM4-ECB(00112233..EEFF)[0*16], recomputed with gmssl (no published SM4 KCV convention)
    assert "demo-tk-sm4          sm4       K0    72EBA3 sm4" in out
    assert "FAIL" not in out
    assert f"{len(selftest.known_answers())}/{len(selftest.known_answers())} checks passed" in out


def test_selftest_fails_with_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = [*selftest.known_answers()]
    broken[0] = selftest.KnownAnswer("broken", "test", lambda: "00", "01")
    monkeypatch.setattr(selftest, "known_answers", lambda: broken)
    lines: list[str] = []
    assert selftest.run(out=lines.append) == 1
    assert "FAIL  broken  [test]" in lines


def test_selftest_reports_bad_key_file(tmp_path: Path) -> None:
    bad = tmp_path / "keys.yaml"
    bad.write_text("keys:\n  - label: x\n    algorithm: rot13\n    value: 00\n")
    with pytest.raises(ConfigError, match="unknown algorithm 'rot13'"):
        selftest.run(bad, out=lambda _line: None)
    assert main(["selftest", "--keys", str(tmp_path / "missing.yaml")]) == 2


def test_unquoted_all_digit_key_keeps_leading_zeros(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n  - label: z\n    usage: K0\n    algorithm: tdes\n"
        "    value: 00111111111111112222222222222222\n"
    )
    (key,) = selftest.load_demo_keys(path)
    assert key.value == bytes.fromhex("00111111111111112222222222222222")
    assert "0011" not in repr(key)
