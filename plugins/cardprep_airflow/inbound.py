"""Trigger-form ``file`` parameter -> the issuer file it names.

An operator names a file by its *name* in the issuer's inbound folder
(``storage.inbound/<issuer>`` or the issuer's ``inbound``), never by an
arbitrary path, so the trigger form cannot point the pipeline at any file on
the worker.  Nor through a link: a name that is a symbolic link in the
folder, or whose resolved path is not directly in the (resolved) folder, is
refused; a link placed in the inbound folder would otherwise make the DAG
read, hash and prepare whatever file it points to.  The inbound folder itself
may be reached through a link (it is compared resolved).

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
    """The absolute path of ``name`` in ``issuer``'s inbound folder.

    ConfigError (field ``file``) when ``name`` is not a plain name, is absent
    or not a regular file, is a symbolic link, or resolves outside the folder.
    """
    from pipeline.errors import ConfigError  # noqa: PLC0415 (parse time)
    from pipeline.records.issuers import load_issuer  # noqa: PLC0415
    from pipeline.steps.context import batch_settings  # noqa: PLC0415

    bs = batch_settings(settings)
    inbound = bs.inbound(issuer, load_issuer(issuer, bs.config_dir).inbound)
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError("file", f"a file name in {inbound} is expected, got {name!r}")
    path = inbound / name
    if path.is_symlink():
        raise ConfigError(
            "file", f"{name} in the inbound folder {inbound} is a symbolic link; refused "
            "(only files delivered into the folder are prepared)"
        )  # fmt: skip
    if not path.is_file():
        raise ConfigError("file", f"{name} is not in the inbound folder {inbound}")
    resolved = path.resolve()
    if resolved.parent != inbound.resolve():
        raise ConfigError("file", f"{name} resolves outside the inbound folder {inbound}; refused")
    return str(resolved)
