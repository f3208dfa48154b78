"""PBOC (SM2) cards/s through one CardPreparer on one core (run by hand, never as a timed test).

Usage:
    .venv/bin/python bench/bench_pboc_card.py [--cards 2000] [--repeat 3]

Initialises the demo key store (``pipeline.keys.demo.init_demo_store``) in a
temporary directory, builds one :class:`~pipeline.prep.CardPreparer` for
``config/products/demo-pboc-sm2.yaml`` (as a worker process would, once) and
prepares ``--cards`` records built like ``tests/scenario/test_prep_card.py``
does (Luhn-valid PANs 623456..., expiry 2812, no KDD, no secret fields).
Reports the best of ``--repeat`` runs as cards/s, by CPU time of this
process (less disturbed by other processes on a shared machine) and by wall
time, and for scale the CPU cost of one SM2 verification (the per-card ICC
certificate self-check) with the plain and the precomputed verifier.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.crypto import sm2
from pipeline.keys.demo import init_demo_store
from pipeline.prep import CardPreparer, PreparedCard, PreparerKeys
from pipeline.profiles import load_product
from pipeline.records.luhn import luhn_check_digit
from pipeline.records.validate import CardRecord

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"


def luhn_pan(body: str) -> str:
    """``body`` followed by its Luhn check digit (ISO/IEC 7812-1 Annex B)."""
    return body + luhn_check_digit(body)


def records(count: int) -> list[CardRecord]:
    return [
        CardRecord(
            line_no=i + 2,
            product="",
            pan=luhn_pan(f"623456{i:012d}"),
            psn="00",
            expiry="2812",
            effective="2301",
            service_code="220",
            name="DOE/JOHN",
            discretionary="0000",
            kdd=None,
            secrets={},
            extra={},
        )
        for i in range(count)
    ]


def demo_store_and_keys(path: Path) -> tuple[Any, Any, PreparerKeys]:
    """(demo key store in ``path``, demo-pboc-sm2 profile, its resolved keys); close the store."""
    store = init_demo_store(
        path / "keys.db",
        CONFIG / "demo" / "keys.yaml",
        passphrase_file=CONFIG / "demo" / "hmk-passphrase.txt",
        audit_path=path / "audit.jsonl",
    )
    profile = load_product("demo-pboc-sm2", CONFIG)
    return store, profile, PreparerKeys.resolve(store, profile, kek="demo-kek",
                                                 pan_token="demo-pan-token")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cards = records(args.cards)
    with tempfile.TemporaryDirectory() as tmp:
        store, profile, keys = demo_store_and_keys(Path(tmp))
        try:
            start = time.perf_counter()
            preparer = CardPreparer(profile, store, keys)
            build_s = time.perf_counter() - start
            preparer.prepare(cards[0])  # warm-up: G's table, caches
            best_cpu = best_wall = 0.0
            prepared: list[object] = []
            for _ in range(max(1, args.repeat)):
                wall, cpu = time.perf_counter(), time.process_time()
                prepared = [preparer.prepare(card) for card in cards]
                cpu = time.process_time() - cpu
                wall = time.perf_counter() - wall
                best_cpu = max(best_cpu, len(cards) / cpu)
                best_wall = max(best_wall, len(cards) / wall)
            ok = [card for card in prepared if isinstance(card, PreparedCard)]
            print(f"pid {os.getpid()}, cpus {os.cpu_count()}, {len(cards)} PBOC cards")
            print(f"CardPreparer built in {build_s * 1000:.0f} ms")
            print(f"prepared {len(ok)}, rejected {len(prepared) - len(ok)}")
            print(f"cards/s (CPU time)  {best_cpu:8,.0f}")
            print(f"cards/s (wall)      {best_wall:8,.0f}")
            d, pub = sm2.generate_keypair()
            signed = [(m, sm2.sign(d, m)) for m in (os.urandom(300) for _ in range(500))]
            for name, verifier in (
                ("plain", sm2.Sm2Verifier(pub)),
                ("precomputed", sm2.Sm2Verifier(pub, precompute=True)),
            ):
                cpu = time.process_time()
                for message, signature in signed:
                    verifier.verify(message, signature)
                per = (time.process_time() - cpu) / len(signed)
                print(f"one SM2 verify, {name:11} {per * 1e6:6.0f} us (CPU)")
        finally:
            store.close()


if __name__ == "__main__":
    main()
