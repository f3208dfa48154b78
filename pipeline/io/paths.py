"""Storage layout of batches, partitioned by issuer and batch id.

DESIGN.md principle 3: outputs are partitioned by batch id, and the manifest is
written last as the commit marker.  ``<root>/deliveries/<issuer>.json``
indexes an issuer's deliveries by header identity
(:mod:`pipeline.io.deliveries`); outside ``batches/`` so that
``<root>/batches/<issuer>/`` holds batch directories only.  A batch
directory looks like::

    <root>/batches/<issuer>/<batch_id>/
        staging/segment-00000.sealed       valid input records (Arrow IPC), sealed
        staging/rejects-parse.parquet      validation rejects (no PAN)
        staging/parsed.json                the parse step's result (resume marker)
        parts/part-00000.parquet           prepared cards of shard 0 (card data sealed)
        parts/part-00000.rejects.parquet   per-shard rejects (self-checks, key store)
        bureau/<batch_id>.cps              the personalization file (sealed body)
        rejects.parquet, rejects.csv       all rejects, masked PANs only
        manifest.json                      commit marker, MACed
        report.json, report.html           batch report

Example:
    >>> from pathlib import Path
    >>> p = BatchPaths(Path("/srv/cardprep"), "demo", "00ab12cd34ef5678")
    >>> str(p.manifest)
    '/srv/cardprep/batches/demo/00ab12cd34ef5678/manifest.json'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

BATCH_ID_HEX = 16


def batch_id_for(sha256_hex: str) -> str:
    """Batch id = first 16 hex digits of the input file's SHA-256 (DESIGN.md step 1)."""
    return sha256_hex[:BATCH_ID_HEX].lower()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class BatchPaths:
    """Every path of one batch, derived from (root, issuer, batch id)."""

    root: Path
    issuer: str
    batch_id: str

    @property
    def base(self) -> Path:
        return self.root / "batches" / self.issuer / self.batch_id

    @property
    def deliveries(self) -> Path:
        """The issuer's delivery index (:mod:`pipeline.io.deliveries`)."""
        return self.root / "deliveries" / f"{self.issuer}.json"

    @property
    def deliveries_lock(self) -> Path:
        """Lock held while the issuer's delivery index is read and rewritten."""
        return self.root / "deliveries" / f".{self.issuer}.lock"

    @property
    def staging(self) -> Path:
        return self.base / "staging"

    def staged_shard(self, index: int) -> Path:
        return self.staging / f"shard-{index:05d}.arrow.sealed"

    def staged_segment(self, index: int) -> Path:
        """Sealed Arrow IPC of valid records ``index * segment_size ..``."""
        return self.staging / f"segment-{index:05d}.sealed"

    @property
    def parsed_state(self) -> Path:
        """The parse step's result, written last: a re-run resumes from it."""
        return self.staging / "parsed.json"

    @property
    def parse_rejects(self) -> Path:
        return self.staging / "rejects-parse.parquet"

    @property
    def parts(self) -> Path:
        return self.base / "parts"

    def part(self, index: int) -> Path:
        return self.parts / f"part-{index:05d}.parquet"

    def part_rejects(self, index: int) -> Path:
        return self.parts / f"part-{index:05d}.rejects.parquet"

    def part_lock(self, index: int) -> Path:
        """Lock file of one shard (two runs never prepare the same shard at once)."""
        return self.parts / f".part-{index:05d}.lock"

    @property
    def rejects_parquet(self) -> Path:
        return self.base / "rejects.parquet"

    @property
    def superseded(self) -> Path:
        """Where a forced re-run moves the previous manifest (evidence, not output)."""
        return self.base / "superseded"

    @property
    def bureau_file(self) -> Path:
        return self.base / "bureau" / f"{self.batch_id}.cps"

    @property
    def rejects_csv(self) -> Path:
        return self.base / "rejects.csv"

    @property
    def manifest(self) -> Path:
        return self.base / "manifest.json"

    @property
    def report_json(self) -> Path:
        return self.base / "report.json"

    @property
    def report_html(self) -> Path:
        return self.base / "report.html"

    @property
    def lock(self) -> Path:
        return self.base / ".lock"
