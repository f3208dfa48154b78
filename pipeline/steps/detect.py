"""Step 1a (DAG task ``detect``): which issuer files are waiting to be prepared.

DESIGN.md "The batch, step by step" 1: a file lands in the issuer's inbound
directory; the batch id comes from its SHA-256, so a file whose batch is
already published is not offered again.  That includes a batch retention has
purged: its MACed manifest stays (with ``purged.json``), so a re-delivered
copy of a purged file is not prepared a second time.  A symbolic link in the
inbound folder is never offered (it could point outside it), as
``resolve_inbound_file`` refuses one named by an operator.

Example:
    >>> detect("demo", load_settings())          # doctest: +SKIP
    ['var/demo/inbound/demo/demo-20250115.dat']
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.io.paths import batch_id_for, sha256_file
from pipeline.keys.settings import Settings
from pipeline.records.issuers import load_issuer
from pipeline.steps.context import batch_settings
from pipeline.steps.retention import TOMBSTONE

__all__ = ["IGNORED_SUFFIXES", "detect"]

log = logging.getLogger(__name__)

#: Files in an inbound directory that are never issuer files.
IGNORED_SUFFIXES: tuple[str, ...] = (".tmp", ".part", ".expected.json", ".sha256", ".lock")


def _candidate(path: Path) -> bool:
    name = path.name
    return path.is_file() and not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES)


def detect(issuer: str, settings: Settings) -> list[str]:
    """Paths (str, sorted) of the issuer's inbound files whose batch is not yet published."""
    bs = batch_settings(settings)
    cfg = load_issuer(issuer, bs.config_dir)
    inbound = bs.inbound(issuer, cfg.inbound)
    if not inbound.is_dir():
        log.info("detect: issuer %s has no inbound directory %s", issuer, inbound)
        return []
    waiting: list[str] = []
    for path in sorted(inbound.iterdir()):
        if path.is_symlink():  # as resolve_inbound_file: a link could point outside inbound
            log.warning("detect: %s is a symbolic link, not offered; deliver the file itself",
                        path.name)  # fmt: skip
            continue
        if not _candidate(path):
            continue
        batch_id = batch_id_for(sha256_file(path))
        paths = bs.paths(issuer, batch_id)
        if paths.manifest.exists():
            purged = (paths.base / TOMBSTONE).exists()
            log.info("detect: %s is batch %s, already published%s", path.name, batch_id,
                     " (outputs since purged by retention)" if purged else "")  # fmt: skip
            continue
        waiting.append(str(path))
    log.info("detect: issuer %s, %d file(s) waiting", issuer, len(waiting))
    return waiting
