"""``cardprep run | inspect`` as an operator meets them: refusals are one clear line.

An operator error (a file that is not there) exits 2 with
``cardprep: error: <where> [<check>]: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli.main import main
from tests.scenario.batchkit import (  # noqa: F401 (fixtures)
    BatchEnv,
    env_fixture,
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
