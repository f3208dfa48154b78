"""A/B timing of the prepare step per card: two source trees, alternately (issue 7; by hand).

Usage::

    .venv/bin/python tests/bench/ab_prepare.py --tree old=/tmp/ab-old --tree new=. \\
        [--rounds 6] [--cards 400]

Each round runs one child process per tree, in alternating order, with
``PYTHONPATH`` set to that tree, so both sides see the same machine load
(2 shared cores).  A child copies the fixture store and pool
(:mod:`prepkit`, RSA product switched to ``icc_key.source: pool`` as in the
pipeline), builds one :class:`~pipeline.steps.prepare.ShardWorker` for both
demo products, warms it up, then per product times

* ``ShardWorker.run`` over ``--cards`` clean records in 256-record chunks
  (Arrow IPC in, sealed part rows out), and
* ``CardPreparer.prepare`` alone over the same records (fresh pool keys),

in microseconds per card, by CPU time of the child (``process_time``) and by
wall time.  The report gives, per tree and figure, the best and the median of
the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

FIXTURE = Path("/tmp/cardprep-bench-fixture")
POOL_KEYS = 1100
CHUNK = 256


def child(fixture: Path, cards: int) -> dict[str, float]:
    """One measurement in this process (see the module docstring)."""
    from prepkit import rsa_records, sm2_records, working_copy  # noqa: PLC0415

    from pipeline.io.staging import records_from_ipc, records_to_ipc  # noqa: PLC0415
    from pipeline.steps.prepare import ShardWorker, WorkerSpec  # noqa: PLC0415

    out: dict[str, float] = {}
    with working_copy(fixture) as (_, store, settings):
        spec = WorkerSpec(
            settings=settings, handle=None, config_dir=fixture / "config", kek="demo-kek",
            pan_token="demo-pan-token", data_key=store.active("demo-data"),
            batch_id="00bench", products=("demo-visa-rsa", "demo-pboc-sm2"),
            secret_checks=(("cvv", "iso9797-m2"), ("icvv", "iso9797-m2")), shard=0,
            chunk_records=CHUNK,
        )  # fmt: skip
        worker = ShardWorker(spec, store=store)
        try:
            for name, make in (("rsa", rsa_records), ("sm2", sm2_records)):
                warm = make(8, 900_000, rejects=False)
                worker.run(records_to_ipc(warm))
                records = make(cards, 2, rejects=False)
                chunks = [records_to_ipc(records[i : i + CHUNK]) for i in range(0, cards, CHUNK)]
                wall, cpu = time.perf_counter(), time.process_time()
                for ipc in chunks:
                    worker.run(ipc)
                out[f"{name} run cpu"] = (time.process_time() - cpu) / cards * 1e6
                out[f"{name} run wall"] = (time.perf_counter() - wall) / cards * 1e6
                decoded = [r for ipc in chunks for r in records_from_ipc(ipc)]
                preparer = worker.preparers[decoded[0].product]
                wall, cpu = time.perf_counter(), time.process_time()
                for record in decoded:
                    preparer.prepare(record)
                out[f"{name} prepare cpu"] = (time.process_time() - cpu) / cards * 1e6
                out[f"{name} prepare wall"] = (time.perf_counter() - wall) / cards * 1e6
        finally:
            worker.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="name=path (twice)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cards", type=int, default=400)
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.fixture, args.cards)))
        return
    from prepkit import fixture_dir  # noqa: PLC0415

    fixture_dir(args.fixture, pool_keys=POOL_KEYS, rsa_keys=1)
    if args.cards * 2 + 16 > POOL_KEYS:
        parser.error(f"--cards at most {(POOL_KEYS - 16) // 2} (pool of {POOL_KEYS})")
    trees = [t.split("=", 1) for t in args.tree]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        for name, path in trees if r % 2 == 0 else trees[::-1]:
            env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()))
            cmd = [sys.executable, __file__, "--child", "--cards", str(args.cards),
                   "--fixture", str(args.fixture)]  # fmt: skip
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = list(results[trees[0][0]][0])
    print(f"us/card, {args.cards} cards per product, {args.rounds} rounds: best (median)")
    print(f"{'':22s}" + "".join(f"{name:>22s}" for name, _ in trees))
    for key in keys:
        cells = []
        for name, _ in trees:
            values = [run[key] for run in results[name]]
            cells.append(f"{min(values):10.1f} ({statistics.median(values):7.1f})")
        print(f"{key:22s}" + "".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
