"""``cardprep keypool`` and the key pool steps (refill for the DAG, shard begin/settle).

Counts are the contract here (XCom-safe dicts); the keys themselves are
checked in test_pool.py.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.cli.keypool import Progress
from pipeline.cli.main import main
from pipeline.errors import ConfigError, InvalidInputError
from pipeline.keys import open_store
from pipeline.keys.demo import init_demo_store
from pipeline.keys.pool import DryPolicy, PoolSpec, pool_path
from pipeline.keys.settings import load_settings, parse_settings
from pipeline.profiles.model import IccKeyAlgorithm, IccKeySource, IccKeySpec
from pipeline.steps.keypool import (
    begin_shard,
    default_tk,
    dry_policy,
    pool_status,
    refill,
    settle_shard,
    shard_icc_source,
)

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "config"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pool-cli")
    init_demo_store(
        base / "keys.db", CONFIG / "demo" / "keys.yaml",
        passphrase_file=CONFIG / "demo" / "hmk-passphrase.txt",
        audit_path=base / "audit.jsonl", with_pki=False,
    ).close()  # fmt: skip
    return base


@pytest.fixture
def settings_file(demo: Path, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "settings.yaml"
    path.write_text(
        "environment: demo\nkey_store:\n  backend: soft\n"
        f"  path: {demo / 'keys.db'}\n  audit_path: {demo / 'audit.jsonl'}\n"
        f"  pool_path: {tmp_path / 'keypool.db'}\n"
        f"  hmk:\n    source: passphrase_file\n"
        f"    passphrase_file: {CONFIG / 'demo' / 'hmk-passphrase.txt'}\n"
    )
    yield path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_fill_status_burn_through_the_cli(
    settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = str(settings_file)
    rc, out, err = _cli(capsys, "keypool", "fill", "--settings", s, "--algorithm", "sm2",
                        "--count", "300", "--workers", "1")  # fmt: skip
    assert rc == 0
    result = json.loads(out)
    assert result["added"] == 300 and result["free"] == 300 and result["tk"] == "demo-tk-sm4@v1"
    assert "sm2 [" in err and "300/300" in err and "ETA" in err  # progress on stderr only
    rc, out, _ = _cli(capsys, "keypool", "fill", "--settings", s, "--algorithm", "sm2",
                      "--count", "200", "--quiet", "--workers", "1")  # fmt: skip
    assert json.loads(out)["free"] == 500
    rc, out, _ = _cli(capsys, "keypool", "fill", "--settings", s, "--algorithm", "sm2",
                      "--count", "400", "--top-up", "--quiet")  # fmt: skip
    assert json.loads(out)["added"] == 0  # already 500 free: nothing to top up
    rc, out, _ = _cli(capsys, "keypool", "status", "--settings", s, "--json")
    assert json.loads(out) == [{"spec": "sm2-256", "storage": "icc-pool-sm4", "free": 500,
                                "claimed": 0, "used": 0, "burned": 0}]  # fmt: skip
    rc, out, _ = _cli(capsys, "keypool", "status", "--settings", s)
    assert "sm2-256" in out and "500" in out
    rc, out, err = _cli(capsys, "keypool", "burn", "--settings", s)
    assert rc == 2 and "--batch" in err
    rc, out, _ = _cli(capsys, "keypool", "burn", "--settings", s, "--all")
    assert rc == 0 and json.loads(out) == {"burned": 0}


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--algorithm", "rsa", "--bits", "1152", "--exponent", "5", "--count", "1"], "exponent"),
        (["--algorithm", "rsa", "--count", "1"], "bits"),
        (["--algorithm", "sm2", "--count", "-1"], "--count"),
        (["--algorithm", "sm2", "--count", "1", "--workers", "0"], "--workers"),
        # an IMK is not a transport key: it must not choose the pool (QA found it accepted)
        (["--algorithm", "sm2", "--count", "1", "--tk", "demo-imk-ac"], "demo-imk-ac@v1"),
    ],
)
def test_fill_refuses_bad_arguments(
    settings_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    rc, _, err = _cli(capsys, "keypool", "fill", "--settings", str(settings_file), *argv)
    assert rc == 2 and f"{field}:" in err


def test_refill_tops_up_to_target(settings_file: Path) -> None:
    settings = load_settings(settings_file)
    first = refill(settings, "sm2", None, None, 100, workers=1)
    again = refill(settings, "sm2", None, None, 150, workers=1)
    same = refill(settings, "sm2", None, None, 120, workers=1)
    assert (first["added"], again["added"], same["added"]) == (100, 50, 0)
    assert same["free_before"] == same["free"] == 150
    assert json.loads(json.dumps(same)) == same  # XCom-safe
    assert pool_status(settings)[0]["free"] == 150
    with pytest.raises(ConfigError):
        refill(settings, "sm2", None, None, -1)
    with pytest.raises(InvalidInputError):
        refill(settings, "rsa", 1152, 7, 1)


def test_shard_begin_source_settle(settings_file: Path) -> None:
    settings = load_settings(settings_file)
    refill(settings, "sm2", None, None, 100, workers=1)
    store = open_store(settings)
    try:
        tk = store.active("demo-tk-sm4")
        crashed = shard_icc_source(settings, store, "b1", 4)
        crashed("sm2", None, None, tk)  # a run that dies here leaves its first chunk (16) claimed
        assert begin_shard(settings, "b1", 4) == {"burned": 16}
        source = shard_icc_source(settings, store, "b1", 4, on_empty=DryPolicy.FAIL)
        pairs = [source("sm2", None, None, tk) for _ in range(10)]
        written = [hashlib.sha256(p.public_key).hexdigest() for p in pairs[:9]]
        assert source.close() == 6  # claimed 16, handed 10
        assert settle_shard(settings, "b1", 4, written) == {"used": 9, "burned": 1}
        [status] = pool_status(settings)
        assert (status["free"], status["used"], status["burned"]) == (74, 9, 17)
    finally:
        store.close()


def test_settle_and_begin_without_a_pool(tmp_path: Path) -> None:
    settings = parse_settings({"key_store": {"path": str(tmp_path / "keys.db")}})
    assert not pool_path(settings).exists()
    assert begin_shard(settings, "b", 0) == {"burned": 0}
    assert settle_shard(settings, "b", 0, ["ab"]) == {"used": 0, "burned": 0}
    assert pool_status(settings) == []


def test_default_tk_and_dry_policy() -> None:
    assert default_tk(parse_settings({}), "sm2") == "demo-tk-sm4"
    with pytest.raises(ConfigError):
        default_tk(parse_settings({"environment": "production"}), "rsa")

    sm2 = IccKeySpec(IccKeyAlgorithm.SM2, None, None, IccKeySource.POOL, (0x8100,))
    assert dry_policy(sm2) is DryPolicy.INLINE  # the default
    assert dry_policy(replace(sm2, pool_empty=DryPolicy.FAIL)) is DryPolicy.FAIL


def test_progress_lines_without_a_terminal() -> None:
    out = io.StringIO()
    ticks = iter([0.0, 1.0, 2.0, 3.0, 4.0])
    bar = Progress("rsa-1152-e3", stream=out, clock=ticks.__next__)
    bar(10, 100)  # 10 %: printed
    bar(15, 100)  # same decile: skipped
    bar(100, 100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].endswith("ETA 0:00") and "100/100" in lines[-1]
    assert PoolSpec.parse("rsa-1152-e3").bits == 1152
