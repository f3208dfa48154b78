"""The trigger form's ``file`` names a file delivered into the inbound folder, never a link.

QA: ``resolve_inbound_file`` followed a symbolic link in the inbound folder, so
an operator-supplied name could make the DAG read a file outside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cardprep_airflow.inbound import resolve_inbound_file

from pipeline.errors import ConfigError
from pipeline.keys.settings import Settings, parse_settings

CONFIG = Path(__file__).resolve().parents[2] / "config"


def _settings(inbound_root: Path) -> Settings:
    return parse_settings({
        "environment": "demo",
        "config_dir": str(CONFIG),
        "storage": {"root": str(inbound_root.parent / "var"), "inbound": str(inbound_root)},
    })  # fmt: skip


@pytest.fixture
def inbound(tmp_path: Path) -> Path:
    folder = tmp_path / "inbound" / "demo"
    folder.mkdir(parents=True)
    (folder / "delivered.dat").write_bytes(b"H...\n")
    return folder


def test_a_delivered_file_resolves_to_its_path(inbound: Path) -> None:
    settings = _settings(inbound.parent)
    assert resolve_inbound_file("demo", "delivered.dat", settings) == str(
        (inbound / "delivered.dat").resolve()
    )


@pytest.mark.parametrize("target", ["outside", "inside", "dangling"])
def test_a_symlink_in_the_inbound_folder_is_refused(
    inbound: Path, tmp_path: Path, target: str
) -> None:
    secret = tmp_path / "elsewhere" / "other-issuer.dat"
    secret.parent.mkdir()
    secret.write_bytes(b"not this issuer's file\n")
    points_to = {
        "outside": secret,
        "inside": inbound / "delivered.dat",
        "dangling": tmp_path / "gone.dat",
    }[target]
    (inbound / "link.dat").symlink_to(points_to)
    refused = r"file: link\.dat in the inbound folder .* symbolic link"
    with pytest.raises(ConfigError, match=refused):
        resolve_inbound_file("demo", "link.dat", _settings(inbound.parent))


def test_an_inbound_folder_reached_through_a_link_still_works(
    inbound: Path, tmp_path: Path
) -> None:
    """Only the *name* may not be a link: the folder itself is compared resolved."""
    linked_root = tmp_path / "linked-inbound"
    linked_root.symlink_to(inbound.parent, target_is_directory=True)
    got = resolve_inbound_file("demo", "delivered.dat", _settings(linked_root))
    assert got == str((inbound / "delivered.dat").resolve())


@pytest.mark.parametrize("name", ["", ".", "..", "../demo/delivered.dat", "missing.dat", "sub"])
def test_other_names_are_refused(inbound: Path, name: str) -> None:
    (inbound / "sub").mkdir()
    with pytest.raises(ConfigError, match="file"):
        resolve_inbound_file("demo", name, _settings(inbound.parent))
