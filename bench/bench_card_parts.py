"""What one SM2 (PBOC) card costs, part by part, on one core (run by hand, never as a timed test).

Usage:
    .venv/bin/python bench/bench_card_parts.py [--cards 3000]

Builds the demo key store and one :class:`~pipeline.prep.CardPreparer` for
``demo-pboc-sm2`` as ``bench/bench_pboc_card.py`` does, then times, without a
profiler (best of 3 passes over the same records, wall microseconds per
call): the whole ``prepare``, and each key-store or crypto call a card makes
alone (one MK derivation, the MK-AC KCV self-check, the PAN token, the ICC
key pair, the issuer's signature, the certificate self-check verification,
the card's record values).  What ``prepare`` costs beyond their sum is the
Python around them (records, TLV, certificate body, DGIs).  The
``docs/PERFORMANCE.md`` per-card budget quotes this.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_pboc_card import demo_store_and_keys, records

from pipeline.crypto import _sm2_curve as curve
from pipeline.crypto import sm2
from pipeline.prep import CardPreparer


def per_call(func: Callable[[Any], object], cards: list[Any], passes: int = 3) -> float:
    """Best-of-``passes`` wall seconds per call of ``func(card)`` over ``cards``."""
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for card in cards:
            func(card)
        best = min(best, (time.perf_counter() - start) / len(cards))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cards", type=int, default=3000)
    args = parser.parse_args()
    cards = records(args.cards)
    with tempfile.TemporaryDirectory() as tmp:
        store, profile, keys = demo_store_and_keys(Path(tmp))
        try:
            preparer = CardPreparer(profile, store, keys)
            preparer.prepare(cards[0])  # warm-up: G's table, caches
            spec, (imk_ac, _, _) = profile.key_sets[0], keys.key_sets[0]
            first = cards[0]
            wrapped = store.derive_and_wrap(imk_ac, first.pan, first.psn, spec.derivation, keys.tk)
            d, public = sm2.generate_keypair()
            # one message and signature per card: the same scalars every call would keep
            # the same table entries in cache and flatter the verification
            signer = sm2.Sm2Signer(d)
            signed = {id(c): (m := c.pan.encode() * 4, signer.sign(m)) for c in cards}
            verifier = sm2.Sm2Verifier(public, precompute=True)
            parts: list[tuple[str, Callable[[Any], object]]] = [
                ("prepare (the whole card)", preparer.prepare),
                ("one MK derivation + wrap + KCV (x3 per card)",
                 lambda c: store.derive_and_wrap(imk_ac, c.pan, c.psn, spec.derivation, keys.tk)),
                ("MK-AC KCV self-check (kcv_of_wrapped)",
                 lambda c: store.kcv_of_wrapped(keys.tk, wrapped.ciphertext, wrapped.kcv_method)),
                ("PAN token", lambda c: store.pan_token(keys.pan_token, c.pan)),
                ("ICC SM2 key pair (store)",
                 lambda c: store.generate_icc_key_pair("sm2", None, None, keys.tk)),
                ("issuer SM2 signature (store)",
                 lambda c: store.sign(preparer.pki.key, b"x" * 100)),
                ("certificate self-check (precomputed verifier)",
                 lambda c: verifier.verify(*signed[id(c)])),
                ("card's record values", lambda c: preparer._card_values(c, b"")),
            ]  # fmt: skip
            native = "C" if curve.native_available() else "Python"
            print(f"{len(cards)} PBOC cards, one core, wall us per call (best of 3);"
                  f" SM2 points in {native}")  # fmt: skip
            for name, func in parts:
                print(f"  {name:48s} {per_call(func, cards) * 1e6:8.1f}")
        finally:
            store.close()


if __name__ == "__main__":
    main()
