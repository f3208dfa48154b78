"""Trigger-form ``file`` parameter -> the issuer file it names.

An operator names a file by its *name* in the issuer's inbound folder
(``storage.inbound/<issuer>`` or the issuer's ``inbound``), never by an
arbitrary path, so the trigger form cannot point the pipeline at any file on
the worker.

Example::

    resolve_inbound_file("demo", "demo-sample.dat", settings)
    # '/srv/cardprep/var/demo/inbound/demo/demo-sample.dat'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.keys.settings import Settings

__all__ = ["resolve_inbound_file"]


def resolve_inbound_file(issuer: str, name: str, settings: Settings) -> str:
    """The absolute path of ``name`` in ``issuer``'s inbound folder; ConfigError if absent."""
    from pipeline.errors import ConfigError  # noqa: PLC0415 (parse time)
    from pipeline.records.issuers import load_issuer  # noqa: PLC0415
    from pipeline.steps.context import batch_settings  # noqa: PLC0415

    bs = batch_settings(settings)
    inbound = bs.inbound(issuer, load_issuer(issuer, bs.config_dir).inbound)
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError("file", f"a file name in {inbound} is expected, got {name!r}")
    path = inbound / name
    if not path.is_file():
        raise ConfigError("file", f"{name} is not in the inbound folder {inbound}")
    return str(path.resolve())
