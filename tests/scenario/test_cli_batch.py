"""``cardprep run | inspect | demo`` as an operator meets them: refusals are one clear line.

An operator error (a file that is not there, a tampered batch) exits 2 with
``cardprep: error: <where> [<check>]: ...`` on stderr, never a traceback, and
``inspect`` never shows a manifest whose MAC does not verify.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.cli.main import main
from pipeline.io.paths import batch_id_for, sha256_file
from tests.scenario.batchkit import (  # noqa: F401 (fixtures)
    BatchEnv,
    Published,
    env_fixture,
    published_fixture,
)


def _settings_file(env: BatchEnv, tmp_path: Path) -> str:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(env.settings.raw))
    return str(path)


@pytest.mark.parametrize("name", ["no-such-file.dat", "."])
def test_run_of_a_missing_or_unreadable_file_is_a_read_error_not_a_traceback(
    env: BatchEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    missing = tmp_path / name
    rc = main(["run", "--issuer", "demo", "--file", str(missing),
               "--settings", _settings_file(env, tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert f"cardprep: error: {missing} [read]: cannot open" in err
    assert "Traceback" not in err


def test_run_of_a_file_whose_header_names_another_issuer_is_refused(
    env: BatchEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The header's issuer_id must be the issuer's ``header_issuer_id`` (docs/INPUT.md)."""
    good = env.sample("other-issuer-src.dat", 6).path
    other = good.with_name("other-issuer.dat")
    lines = good.read_bytes().splitlines(keepends=True)
    assert lines[0].startswith(b"HDEMO    ")
    other.write_bytes(b"HOTHER   " + lines[0][9:] + b"".join(lines[1:]))
    rc = main(["run", "--issuer", "demo", "--file", str(other),
               "--settings", _settings_file(env, tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"{other} [issuer]: header issuer_id 'OTHER' is not issuer demo's 'DEMO'" in err
    batch_id = batch_id_for(sha256_file(other))
    left = [p.name for d in env.root.rglob(batch_id) for p in d.iterdir()]
    assert not list(env.root.rglob(batch_id)), f"a refused file left {left}"  # not even .lock
    assert main(["run", "--issuer", "demo", "--file", str(good), "--dry-run",
                 "--settings", _settings_file(env, tmp_path)]) == 0  # fmt: skip


@pytest.fixture
def batch_copy(published: Published, tmp_path: Path) -> Path:
    """A copy of the published batch under ``<tmp>/batches/demo/<id>`` (free to tamper)."""
    dest = tmp_path / "copy" / "batches" / "demo" / published.batch_dir.name
    shutil.copytree(published.batch_dir, dest)
    return dest


def test_inspect_shows_a_batch_whose_manifest_mac_verifies(
    env: BatchEnv, batch_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(batch_copy), "--settings", _settings_file(env, tmp_path)]) == 0
    assert f"batch {batch_copy.name} of issuer demo" in capsys.readouterr().out


def test_inspect_refuses_an_edited_manifest_instead_of_showing_its_numbers(
    env: BatchEnv, batch_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = batch_copy / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["counts"]["prepared"] += 1
    manifest.write_text(json.dumps(doc))
    rc = main(["inspect", str(batch_copy), "--settings", _settings_file(env, tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "[mac]: MAC under" in err and "does not verify" in err
    assert "prepared" not in out


@pytest.mark.parametrize("doc", [{}, {"batch_id": "x", "counts": {}}])
def test_inspect_of_a_manifest_without_its_members_is_an_error_not_a_traceback(
    env: BatchEnv, batch_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    doc: dict[str, object],
) -> None:  # fmt: skip
    (batch_copy / "manifest.json").write_text(json.dumps(doc))
    rc = main(["inspect", str(batch_copy), "--settings", _settings_file(env, tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "manifest.json [mac]: manifest has no mac member" in err
    assert "Traceback" not in err


def _demo_settings(tmp_path: Path, config: Path) -> Path:
    """Demo settings with ``config`` and a soft store and storage under ``tmp_path``."""
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({
        "environment": "demo",
        "config_dir": str(config),
        "key_store": {"backend": "soft", "path": str(tmp_path / "keys" / "keys.db"),
                      "audit_path": str(tmp_path / "keys" / "audit.jsonl"),
                      "hmk": {"source": "passphrase_file",
                              "passphrase_file": str(config / "demo" / "hmk-passphrase.txt")}},
        "storage": {"root": str(tmp_path / "var"), "inbound": str(tmp_path / "inbound")},
    }))  # fmt: skip
    return settings


def test_demo_reads_its_test_keys_from_the_configured_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Settings with an absolute ``config_dir``, run from a directory without ``config/``."""
    config = Path(__file__).resolve().parents[2] / "config"
    settings = _demo_settings(tmp_path, config)
    monkeypatch.chdir(tmp_path)
    rc = main(["demo", "--cards", "3", "--errors", "0", "--seed", "5", "--workers", "1",
               "--settings", str(settings)])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "verify: OK, 3 cards" in out


def test_demo_refuses_a_store_built_from_other_test_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store left from an earlier keys.yaml: one clear error, not 3 cards rejected as R071."""
    from pipeline.keys.demo import init_demo_store  # noqa: PLC0415

    config = Path(__file__).resolve().parents[2] / "config"
    raw = yaml.safe_load((config / "demo" / "keys.yaml").read_text())
    next(k for k in raw["keys"] if k["label"] == "demo-kek")["value"] = "0F" * 16
    (tmp_path / "older.yaml").write_text(yaml.safe_dump(raw))
    init_demo_store(
        tmp_path / "keys" / "keys.db", tmp_path / "older.yaml",
        passphrase_file=config / "demo" / "hmk-passphrase.txt",
        audit_path=tmp_path / "keys" / "audit.jsonl", with_pki=False,
    ).close()  # fmt: skip
    settings = _demo_settings(tmp_path, config)
    rc = main(["demo", "--cards", "3", "--errors", "0", "--seed", "5", "--workers", "1",
               "--settings", str(settings)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "built from other TEST keys" in err and "demo-kek KCV" in err
    assert not (tmp_path / "inbound").exists() or not any((tmp_path / "inbound").rglob("*.dat"))


def test_a_one_card_file_leaves_no_pan_digits_in_the_parse_result_or_manifest(
    env: BatchEnv, tmp_path: Path
) -> None:
    """QA: a pan_sum hash total of one card is that PAN's last 10 digits (PAN: 6 + 4 at most)."""
    from pipeline.keys.settings import load_settings  # noqa: PLC0415
    from pipeline.steps.batch import run_batch  # noqa: PLC0415
    from pipeline.steps.parse import verify_and_parse  # noqa: PLC0415

    one = env.sample("one-card.dat", 1).path
    trailer = one.read_bytes().splitlines()[-1].decode()
    pan_sum = trailer[10:28]  # demo-fixed trailer: hash_total at 11..28 (docs/INPUT.md)
    assert pan_sum.isdigit() and int(pan_sum) > 0
    settings = load_settings(Path(_settings_file(env, tmp_path)))
    parsed = verify_and_parse("demo", one, settings, stage=False)
    assert pan_sum.lstrip("0") not in json.dumps(parsed)
    assert parsed["input_hash_check"] == "pan_sum matched the trailer"
    summary = run_batch("demo", one, settings)
    manifest = Path(summary["manifest"]).read_text()
    assert pan_sum.lstrip("0") not in manifest
    assert json.loads(manifest)["input"]["hash_total_check"] == "pan_sum matched the trailer"


def test_verify_refuses_a_file_the_manifest_does_not_list(
    env: BatchEnv, batch_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: a Parquet part added to a published batch passed ``cardprep verify``."""
    settings = _settings_file(env, tmp_path)
    assert main(["verify", str(batch_copy), "--no-rederive", "--settings", settings]) == 0
    listed = sorted((batch_copy / "parts").glob("part-*[0-9].parquet"))
    extra = batch_copy / "parts" / "part-09999.parquet"
    shutil.copyfile(listed[0], extra)
    capsys.readouterr()
    assert main(["verify", str(batch_copy), "--no-rederive", "--settings", settings]) == 1
    out = capsys.readouterr()
    assert f"{extra} [unlisted]" in out.out + out.err
