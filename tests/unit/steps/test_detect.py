"""``detect`` (the nightly sweep's list of waiting files) offers no symbolic link.

``resolve_inbound_file`` refuses a link named by an operator (the DAG's ``file``
param); the sweep must not offer one either, or a link in the inbound folder
would make the batch read a file outside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.keys.settings import Settings
from pipeline.steps.detect import detect


def test_a_symbolic_link_in_the_inbound_folder_is_not_offered(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbound = tmp_path / "inbound" / "demo"
    inbound.mkdir(parents=True)
    outside = tmp_path / "elsewhere.dat"
    outside.write_bytes(b"a file outside the inbound folder")
    (inbound / "link.dat").symlink_to(outside)
    (inbound / "real.dat").write_bytes(b"a file delivered here")
    caplog.set_level("WARNING", logger="pipeline.steps.detect")
    assert detect("demo", settings) == [str(inbound / "real.dat")]
    assert "link.dat is a symbolic link" in caplog.text


def test_a_link_to_a_folder_is_not_offered_either(settings: Settings, tmp_path: Path) -> None:
    inbound = tmp_path / "inbound" / "demo"
    inbound.mkdir(parents=True)
    (inbound / "dir.dat").symlink_to(tmp_path)
    assert detect("demo", settings) == []
