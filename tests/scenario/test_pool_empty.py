"""Scenario: a pool product whose pool runs dry mid-batch, under each ``icc_key.pool_empty``.

The demo RSA product with ``icc_key.source: pool`` (copy of the demo config,
as in test_pool_batch); the pool holds 4 keys, the file has 6 cards (one
shard).  Inline ICC key generation is counted across processes (the store
class is patched before the workers fork; each call appends a line to a file).

* ``pool_empty: fail``: the batch stops with KeyPoolEmptyError, in-process
  and across worker processes; nothing is published (no manifest, no part),
  no pool entry becomes ``used`` and no card got an inline key.
* ``pool_empty: inline`` and the default: the same batch completes; the 4
  pool keys are used by 4 cards, the 2 others got inline keys (the part's
  other 2 hashes), nothing stays claimed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.errors import KeyPoolEmptyError
from pipeline.keys.pool import KeyPool, PoolSpec, PoolStatus, pool_path
from pipeline.keys.settings import Settings
from pipeline.keys.soft import SoftKeyStore
from pipeline.records.sample import write_sample
from pipeline.steps.batch import run_batch
from tests.scenario.test_pool_batch import (
    BATCH_DATE,
    _config,
    _settings,
    _store_with_pool,
)

CARDS, POOL_KEYS = 6, 4
SPEC = PoolSpec.of("rsa", 1152, 3)


def _pool_product(tmp: Path, pool_empty: str | None) -> tuple[Settings, Path]:
    """Settings over a config copy whose RSA product is ``source: pool`` (+ ``pool_empty``)."""
    cfg = _config(tmp)
    path = cfg / "products" / "demo-visa-rsa.yaml"
    product = yaml.safe_load(path.read_text())
    if pool_empty is not None:
        product["icc_key"]["pool_empty"] = pool_empty
    path.write_text(yaml.safe_dump(product))
    return _settings(tmp, cfg), cfg


def _count_inline_keys(monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
    """Append a line to ``log`` for every ICC key pair the store generates (in any process)."""
    generate = SoftKeyStore.generate_icc_key_pair

    def counted(self: SoftKeyStore, *args: Any) -> Any:
        with log.open("a") as out:
            out.write("inline\n")
        return generate(self, *args)

    monkeypatch.setattr(SoftKeyStore, "generate_icc_key_pair", counted)


def _inline_keys(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _status(settings: Settings) -> PoolStatus:
    with KeyPool(pool_path(settings)) as pool:
        [status] = pool.status()
    return status


def _run(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, pool_empty: str | None, workers: int
) -> tuple[Settings, Path, Any]:
    """Fill the pool with POOL_KEYS keys and run a CARDS-card batch; (settings, log, outcome).

    ``outcome`` is the run's summary, or the exception it raised.
    """
    settings, cfg = _pool_product(tmp, pool_empty)
    store = _store_with_pool(tmp, settings, POOL_KEYS, workers=1)
    log = tmp / "inline-keys.log"
    try:
        sample = write_sample("demo", CARDS, tmp / "inbound" / "demo" / "a.dat", seed=3,
                              batch_date=BATCH_DATE, config_dir=cfg)  # fmt: skip
        _count_inline_keys(monkeypatch, log)
        try:
            outcome: Any = run_batch(
                "demo", sample.path, settings, shard_size=CARDS, workers=workers,
                batch_date=BATCH_DATE, store=store,
            )  # fmt: skip
        except KeyPoolEmptyError as exc:
            outcome = exc
    finally:
        store.close()
    return settings, log, outcome


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "two workers"])
def test_dry_pool_with_fail_stops_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    settings, log, outcome = _run(tmp_path, monkeypatch, "fail", workers)
    assert isinstance(outcome, KeyPoolEmptyError), outcome
    assert outcome.field == SPEC.name and "profile says fail" in outcome.detail
    assert _inline_keys(log) == 0  # no card silently took an inline key
    batches = tmp_path / "var" / "batches"
    # the parse staged (all of it in process; on two workers the first segments, while
    # the workers prepared them: pipeline.steps.stream), then the batch stopped
    assert list(batches.rglob("segment-*.sealed"))
    assert not list(batches.rglob("manifest.json"))  # nothing published
    assert not list(batches.rglob("part-*[0-9].parquet"))  # no part committed
    status = _status(settings)
    assert (status.free, status.used) == (0, 0)  # every key went to a card never written
    assert status.claimed + status.burned == POOL_KEYS  # burned when the shard restarts


@pytest.mark.parametrize(
    ("pool_empty", "workers"), [("inline", 2), (None, 1)], ids=["inline", "default"]
)
def test_dry_pool_with_inline_generates_the_shortfall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool_empty: str | None, workers: int
) -> None:
    settings, log, summary = _run(tmp_path, monkeypatch, pool_empty, workers)
    assert isinstance(summary, dict), summary
    assert summary["counts"] == {"in": CARDS, "prepared": CARDS, "rejected": 0}
    batch_dir = Path(summary["batch_dir"])
    assert batch_dir.parent.parent == tmp_path / "var" / "batches"  # where the fail test looks
    assert (batch_dir / "manifest.json").is_file()
    parts = sorted((batch_dir / "parts").glob("part-*[0-9].parquet"))
    hashes = [h for p in parts for h in pq.read_table(p, columns=["icc_pk_sha256"])[0].to_pylist()]
    assert len(hashes) == len(set(hashes)) == CARDS
    assert _inline_keys(log) == CARDS - POOL_KEYS
    status = _status(settings)
    assert (status.used, status.free, status.claimed, status.burned) == (POOL_KEYS, 0, 0, 0)
