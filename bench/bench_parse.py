"""Parse + validate throughput of pipeline.records, by hand (never a timed test).

Writes a sample file (no injected errors unless --errors), then times, on one
core: verify_file (SHA-256 + counts + hash total), iter_records alone, and
iter_records + Validator.check.  Reports records per second of CPU time
(time.process_time: the machine is shared, wall time is not this process's).

    .venv/bin/python bench/bench_parse.py --issuer demo --cards 200000
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from datetime import date
from pathlib import Path

from pipeline.records.issuers import load_issuer
from pipeline.records.layout import load_layout
from pipeline.records.parse import iter_records, verify_file
from pipeline.records.sample import write_sample
from pipeline.records.validate import Validator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--issuer", default="demo")
    ap.add_argument("--cards", type=int, default=200_000)
    ap.add_argument("--errors", type=float, default=0.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    issuer = load_issuer(args.issuer)
    layout = load_layout(issuer.layout)
    batch = date(2025, 1, 15)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.in"
        t0 = time.process_time()
        write_sample(args.issuer, args.cards, out, error_rate=args.errors, seed=1,
                     batch_date=batch)
        t_gen = time.process_time() - t0
        size = out.stat().st_size
        print(f"{args.issuer} ({layout.format.value}): {args.cards} records, "
              f"{size / 1e6:.1f} MB; sample written in {t_gen:.1f} s "
              f"({args.cards / t_gen:,.0f} records/s)")
        best = {"verify": 1e9, "parse": 1e9, "parse+validate": 1e9}
        for _ in range(args.repeat):
            t0 = time.process_time()
            verify_file(out, layout)
            best["verify"] = min(best["verify"], time.process_time() - t0)
            t0 = time.process_time()
            for _raw in iter_records(out, layout):
                pass
            best["parse"] = min(best["parse"], time.process_time() - t0)
            t0 = time.process_time()
            v = Validator(issuer, layout, batch)
            check = v.check
            for raw in iter_records(out, layout):
                check(raw)
            best["parse+validate"] = min(best["parse+validate"], time.process_time() - t0)
        for name, secs in best.items():
            print(f"  {name:<16} {secs:6.2f} s  {args.cards / secs:>10,.0f} records/s")
        tracemalloc.start()
        v = Validator(issuer, layout, batch)
        for raw in iter_records(out, layout):
            v.check(raw)
        cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  memory: peak {peak / 1e6:.1f} MB traced for parse+validate "
              f"(duplicate set {cur / 1e6:.1f} MB retained, "
              f"{cur / max(v.accepted, 1):.0f} B per accepted card)")


if __name__ == "__main__":
    main()
