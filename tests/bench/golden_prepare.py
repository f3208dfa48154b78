"""Golden check of the prepare step: every output byte, before and after a change (issue 7).

Usage (run by hand; the fixture takes ~10 s to build once)::

    .venv/bin/python tests/bench/golden_prepare.py --write /tmp/golden.txt    # on the old code
    .venv/bin/python tests/bench/golden_prepare.py --check /tmp/golden.txt    # on the new code

With randomness pinned (:mod:`prepkit`), prepares a fixed set of cards of both
demo products two ways and dumps every output:

* ``CardPreparer.prepare`` directly (demo-visa-rsa with inline ICC keys,
  demo-pboc-sm2): each PreparedCard's DGIs (id, flag, value), KCVs, PAN token,
  masked PAN and ICC key hash, or each Reject's fields;
* ``ShardWorker.run`` over Arrow IPC chunks mixing both products, with the
  RSA product switched to the ICC key pool: the part rows' IPC bytes (sealed
  ``card_data`` included) and the reject rows.

``--check`` compares line by line and prints the first differences.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepkit import (
    KEK,
    fixture_dir,
    pinned_randomness,
    rsa_records,
    sm2_records,
    working_copy,
)

from pipeline.io.staging import records_to_ipc, table_from_ipc
from pipeline.keys.model import KeyRef, TranslateCheck
from pipeline.prep import CardPreparer, PreparedCard, PreparerKeys
from pipeline.profiles import load_product
from pipeline.records.layout import load_layout
from pipeline.steps.prepare import ShardWorker, WorkerSpec, secret_checks_for

FIXTURE = Path("/tmp/cardprep-golden-fixture")
CARDS = 60  # per product


def _card_lines(result: object) -> list[str]:
    if not isinstance(result, PreparedCard):
        return [f"reject {result!r}"]
    head = (
        f"card {result.line_no} {result.product} {result.masked_pan} {result.pan_token} "
        f"{result.icc_public_key_sha256} kcvs={sorted(result.kcvs.items())}"
    )
    return [head] + [f"  {d.id:04X} {int(d.encrypted)} {d.value.hex()}" for d in result.dgis]


def run(fixture: Path) -> list[str]:
    """Every output line of both ways of preparing (see the module docstring)."""
    lines: list[str] = []
    layout = load_layout("demo-fixed", fixture / "config")
    checks = secret_checks_for(layout)
    assert KEK  # the records' secrets are under the demo KEK
    for product, records in (
        ("demo-visa-rsa", rsa_records(CARDS)),
        ("demo-pboc-sm2", sm2_records(CARDS)),
    ):
        with working_copy(fixture) as (_, store, _settings), pinned_randomness(fixture, 7):
            profile = load_product(product, Path(__file__).resolve().parents[2] / "config")
            keys = PreparerKeys.resolve(store, profile, kek="demo-kek", pan_token="demo-pan-token")
            preparer = CardPreparer(
                profile, store, keys,
                secret_checks={n: TranslateCheck(v) for n, v in checks},
            )  # fmt: skip
            for record in records:
                lines += _card_lines(preparer.prepare(record))
    with working_copy(fixture) as (_, store, settings), pinned_randomness(fixture, 11):
        spec = WorkerSpec(
            settings=settings, handle=None, config_dir=fixture / "config", kek="demo-kek",
            pan_token="demo-pan-token", data_key=store.active("demo-data"),
            batch_id="00golden", products=("demo-visa-rsa", "demo-pboc-sm2"),
            secret_checks=checks, shard=0, chunk_records=16,
        )  # fmt: skip
        assert isinstance(spec.data_key, KeyRef)
        worker = ShardWorker(spec, store=store)
        try:
            mixed = [r for pair in zip(rsa_records(30), sm2_records(30, 100), strict=True)
                     for r in pair]  # fmt: skip
            for start in range(0, len(mixed), 16):
                ipc, rejects = worker.run(records_to_ipc(mixed[start : start + 16]))
                lines.append(f"chunk {start} ipc sha256 {hashlib.sha256(ipc).hexdigest()}")
                table = table_from_ipc(ipc)
                for row in table.to_pylist():
                    row["card_data"] = row["card_data"].hex()
                    lines.append(f"  row {sorted(row.items())}")
                lines += [f"  reject {sorted(r.items())}" for r in rejects]
        finally:
            worker.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--write", type=Path)
    what.add_argument("--check", type=Path)
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    args = parser.parse_args()
    lines = run(fixture_dir(args.fixture))
    text = "\n".join(lines) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()
    cards = sum(line.startswith("card ") for line in lines)
    rejects = sum("reject " in line for line in lines)
    rows = sum(line.startswith("  row ") for line in lines)
    print(f"{len(lines)} lines, {cards} cards, {rows} part rows, {rejects} rejects")
    print(f"sha256 {digest}")
    if args.write:
        args.write.write_text(text)
        return
    golden = args.check.read_text().splitlines()
    if golden == lines:
        print("IDENTICAL to", args.check)
        return
    diffs = [i for i in range(max(len(golden), len(lines)))
             if i >= len(golden) or i >= len(lines) or golden[i] != lines[i]]  # fmt: skip
    print(f"DIFFERENT: {len(diffs)} lines differ (golden {len(golden)}, now {len(lines)})")
    for i in diffs[:5]:
        print(f"  line {i}:\n    golden {golden[i][:200] if i < len(golden) else '-'}")
        print(f"    now    {lines[i][:200] if i < len(lines) else '-'}")
    sys.exit(1)


if __name__ == "__main__":
    main()
