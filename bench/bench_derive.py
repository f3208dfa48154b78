"""Benchmark: EMV Option A ICC master key derivations per second per core.

Run by hand (never as a timed test):

    .venv/bin/python bench/bench_derive.py [--seconds 1.0]

Compares, in the same run and one process (= one core):

* ``bare``: one reused 3DES-ECB encryptor (``cryptography``, decrepit
  TripleDES) doing the same two block encryptions (Y || Y xor FF..FF, one
  16-byte ``update``) on pre-built inputs: the crypto-only bound;
* ``IccMkDeriver.derive``: the pipeline's fast path (PAN/PSN validation, Y
  construction, the same encryption, odd parity);
* ``derive_icc_mk``: the one-shot function (new cipher context per call).

Ratio = rate / bare rate.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from collections.abc import Callable

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from pipeline.crypto.ciphers import fix_parity
from pipeline.crypto.emv import IccMkDeriver, derive_icc_mk

IMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def _pans(n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        length = 12 + i % 8
        pan = "".join(str(secrets.randbelow(10)) for _ in range(length))
        out.append((pan, f"{i % 100:02d}"))
    return out


def _rate(fn: Callable[[int], None], seconds: float) -> float:
    """Calls/second of ``fn(batch)`` doing ``batch`` operations, best of 3 timed runs."""
    batch = 1000
    fn(batch)  # warm up
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            fn(batch)
            done += batch
        best = max(best, done / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    args = parser.parse_args()

    cards = _pans(1000)
    blocks = []
    for pan, psn in cards:
        y = bytes.fromhex((pan + psn)[-16:].rjust(16, "0"))
        blocks.append(y + bytes(b ^ 0xFF for b in y))

    enc = Cipher(TripleDES(IMK + IMK[:8]), modes.ECB()).encryptor()
    deriver = IccMkDeriver(IMK, "A")
    for (pan, psn), block in zip(cards[:50], blocks[:50], strict=True):
        assert deriver.derive(pan, psn) == derive_icc_mk(IMK, pan, psn)
        assert deriver.derive(pan, psn) == fix_parity(enc.update(block))  # same work as bare

    def bare(n: int) -> None:
        update = enc.update
        for i in range(n):
            update(blocks[i % 1000])

    def fast(n: int) -> None:
        derive = deriver.derive
        for i in range(n):
            pan, psn = cards[i % 1000]
            derive(pan, psn)

    def oneshot(n: int) -> None:
        for i in range(n):
            pan, psn = cards[i % 1000]
            derive_icc_mk(IMK, pan, psn)

    rates = {
        "bare reused 3DES encryptor (2 blocks)": _rate(bare, args.seconds),
        "IccMkDeriver.derive (Option A)": _rate(fast, args.seconds),
        "derive_icc_mk (Option A, one-shot)": _rate(oneshot, args.seconds),
    }
    base = rates["bare reused 3DES encryptor (2 blocks)"]
    print(f"Option A ICC MK derivation, one process (cpu count {os.cpu_count()})")
    print(f"{'path':<40} {'per second per core':>20} {'ratio to bare':>14}")
    for name, rate in rates.items():
        print(f"{name:<40} {rate:>20,.0f} {rate / base:>14.3f}")


if __name__ == "__main__":
    main()
