"""Leaks: after a demo batch, no byte the run wrote holds a PAN, a key, a PIN block or a CVV.

Issue 8 "Leaks".  A demo batch runs through the command line (``cardprep
run``, ``verify``, ``inspect`` without ``--reveal``, ``audit show``) in a
private installation; then EVERY file under it (logs, Parquet parts,
rejects, bureau file, reports, manifest, audit trail and head, SQLite key
store with its WAL, lock files, staging leftovers) and the commands'
stdout/stderr are scanned for:

* full PANs: any Luhn-valid run of 13..19 digits not inside a longer
  alphanumeric token (hex digests are not PANs), and every exact PAN of the
  input file as ASCII and as packed BCD (tag 5A form);
* every demo key and component in hex (upper and lower case) and raw bytes:
  config/demo/keys.yaml, the ceremony tests' fixed values, the demo HMK
  passphrase;
* every PIN block and CVV/iCVV of the input, clear (decrypted here with the
  TEST KEK: PIN block, padded CVV block) and as the KEK ciphertext the input
  carried (a copy of input secrets is a leak too).

The input file itself and its ``.expected.json`` sidecar are excluded: they
are the issuer's data, not something the run wrote.  Zero hits expected.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from pipeline.records.issuers import load_issuer
from pipeline.records.layout import load_layout
from pipeline.records.luhn import luhn_valid
from pipeline.records.parse import iter_records
from tests.reliability.enginekit import CONFIG, PASSPHRASE, World

_PAN_RUN = re.compile(rb"(?<![0-9A-Za-z])[0-9]{13,19}(?![0-9A-Za-z])")
# Fixed TEST values of the ceremony tests (tests/scenario/test_ceremony_scenario.py).
CEREMONY_VALUES = [bytes(range(32)), bytes.fromhex("00112233445566778899AABBCCDDEEFF" * 2)]


def _demo_keys() -> list[bytes]:
    text = (CONFIG / "demo" / "keys.yaml").read_text()
    data = yaml.load(text, Loader=yaml.BaseLoader)  # strings only: keep hex as written
    return [bytes.fromhex(k["value"]) for k in data["keys"]]


def _decrypt(key: bytes, data: bytes) -> bytes:
    dec = Cipher(TripleDES(key + key[:8] if len(key) == 16 else key), modes.ECB()).decryptor()
    return dec.update(data) + dec.finalize()


def _needles(input_file: Path) -> dict[str, bytes]:
    """name -> bytes that must not occur anywhere the run wrote."""
    needles: dict[str, bytes] = {}
    for i, key in enumerate(_demo_keys() + CEREMONY_VALUES):
        needles[f"key{i}-hex-upper"] = key.hex().upper().encode()
        needles[f"key{i}-hex-lower"] = key.hex().encode()
        needles[f"key{i}-raw"] = key
    needles["hmk-passphrase"] = PASSPHRASE.read_text().strip().encode()
    issuer = load_issuer("demo", CONFIG)
    layout = load_layout(issuer.layout, CONFIG)
    data = yaml.load((CONFIG / "demo" / "keys.yaml").read_text(), Loader=yaml.BaseLoader)
    kek = next(bytes.fromhex(k["value"]) for k in data["keys"] if k["label"] == issuer.kek)
    for raw in iter_records(input_file, layout):
        f = raw.fields
        pan = f.get("pan", "")
        if raw.problem is None and pan.isdigit() and len(pan) >= 13:
            needles[f"pan@{raw.line_no}"] = pan.encode()
            needles[f"pan-bcd@{raw.line_no}"] = bytes.fromhex(pan + "F" * (len(pan) % 2))
        for name in ("pin_block", "cvv", "icvv"):
            value = f.get(name, "")
            if raw.problem is None and value and re.fullmatch(r"(?:[0-9A-F]{16})+", value):
                ct = bytes.fromhex(value)
                clear = _decrypt(kek, ct)
                needles[f"{name}-ct@{raw.line_no}"] = value.encode()
                needles[f"{name}-clear-hex@{raw.line_no}"] = clear.hex().upper().encode()
                needles[f"{name}-clear-hex-lower@{raw.line_no}"] = clear.hex().encode()
                needles[f"{name}-clear@{raw.line_no}"] = clear
    return needles


def _scan(blobs: dict[str, bytes], needles: dict[str, bytes]) -> list[str]:
    hits = []
    for where, data in blobs.items():
        for name, needle in needles.items():
            if needle and needle in data:
                hits.append(f"{where}: {name}")
        for m in _PAN_RUN.finditer(data):
            if luhn_valid(m.group().decode()):
                hits.append(f"{where}: Luhn-valid digit run of {len(m.group())} at {m.start()}")
    return hits


@pytest.mark.slow
def test_demo_batch_writes_no_secret_anywhere(world: World) -> None:
    sample = world.sample(40, seed=5, errors=0.1)
    outputs: dict[str, bytes] = {}
    run = world.cli("run", "--issuer", "demo", "--file", str(sample.path))
    assert run.returncode == 0, run.stderr
    outputs["run stdout"], outputs["run stderr"] = run.stdout.encode(), run.stderr.encode()
    (batch,) = world.batches()
    for args in (["verify", str(batch)], ["inspect", str(batch)],
                 ["inspect", str(batch), "--card", "2"], ["audit", "show"]):  # fmt: skip
        r = world.cli(*args)
        outputs[f"{args[0]} stdout"] = r.stdout.encode()
        outputs[f"{args[0]} stderr"] = r.stderr.encode()
    blobs = dict(outputs)
    excluded = {sample.path, sample.expected_path, world.settings}
    files = [p for p in world.root.rglob("*") if p.is_file() and p not in excluded]
    assert any(p.suffix == ".parquet" for p in files) and any(p.suffix == ".db" for p in files)
    for p in files:
        blobs[str(p.relative_to(world.root))] = p.read_bytes()
    needles = _needles(sample.path)
    assert sum(n.startswith("pan@") for n in needles) >= 20
    assert any(n.startswith("pin_block-clear@") for n in needles)
    # the scanner finds what it looks for (control): the input file is full of hits
    assert _scan({"input": sample.path.read_bytes()}, needles)
    hits = _scan(blobs, needles)
    assert not hits, "\n".join(hits[:50])
