"""The steps as Airflow calls them: XCom-safe return values, and no PAN or key anywhere.

Issue 6 "XCom carries paths, counts and KCVs only" and issue 8 "Leaks": every
step's return value is scanned for Luhn-valid 13..19 digit runs and for the
demo keys in hex; every file the batch wrote (Parquet read back as values,
so compression hides nothing), the audit trail and the captured logs are
scanned for the sample's PANs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.records.layout import load_layout
from pipeline.records.luhn import luhn_valid as luhn_valid_pan
from pipeline.records.parse import iter_records
from pipeline.steps.detect import detect
from pipeline.steps.parse import verify_and_parse
from pipeline.steps.plan import plan_shards
from pipeline.steps.prepare import prepare_shard
from pipeline.steps.publish import publish
from pipeline.steps.reconcile import reconcile
from pipeline.steps.verify import verify_batch
from tests.scenario.batchkit import (  # noqa: F401 (fixtures)
    CONFIG,
    BatchEnv,
    env_fixture,
    key_hex_hits,
    luhn_runs,
)


def _scan_values(values: list[Any]) -> None:
    text = json.dumps(values, sort_keys=True)
    assert luhn_runs(text) == []
    assert key_hex_hits(text) == []


def _file_text(path: Path) -> str:
    if path.suffix == ".parquet":
        return json.dumps(pq.read_table(path).to_pylist(), default=lambda b: b.hex())
    return path.read_bytes().decode("latin-1")


def test_steps_one_by_one_return_xcom_safe_values_and_leak_nothing(
    env: BatchEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sample = env.sample("leaks.dat", 24, errors=0.2, seed=31)
    pans = {r.fields["pan"] for r in iter_records(sample.path, load_layout("demo-fixed", CONFIG))
            if len(r.fields.get("pan", "")) >= 13}
    assert len(pans) > 10
    some = sorted(pans)[0]  # the scanners do find what they look for
    assert luhn_runs(json.dumps({"x": some})) or not luhn_valid_pan(some)
    assert "demo-tk" in key_hex_hits("..." + "11111111111111112222222222222222" + "...")
    waiting = detect("demo", env.settings)
    assert str(sample.path) in waiting
    parsed = verify_and_parse("demo", sample.path, env.settings, store=env.store)
    shards = plan_shards(parsed, 8)
    results = [prepare_shard(s, env.settings, workers=2, store=env.store) for s in shards]
    published = publish(parsed, results, env.settings, store=env.store)
    summary = reconcile(published, env.settings, store=env.store)
    verified = verify_batch(summary["batch_dir"], env.settings, store=env.store)
    values = [waiting, parsed, shards, results, published, summary, verified]
    _scan_values(values)
    json.dumps(values)  # JSON-able as they are
    assert str(sample.path) not in detect("demo", env.settings)
    # every byte the batch wrote, the audit trail and the logs: no PAN
    written = [p for p in Path(summary["batch_dir"]).rglob("*") if p.is_file()]
    written += [env.root / "audit.jsonl"]
    assert any(p.suffix == ".cps" for p in written)
    texts = {str(p): _file_text(p) for p in written}
    texts["logs"] = caplog.text
    for where, text in texts.items():
        leaked = [pan[:6] for pan in pans if pan in text]
        assert leaked == [], f"{where} holds PANs of BINs {leaked}"
        assert key_hex_hits(text) == [], where
