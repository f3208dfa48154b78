"""Tampering: an edited key-store row, audit line, output byte or manifest field is detected.

Issue 8 "Tampering".  One demo batch is published once (``cardprep run``);
each case clones the whole installation (key store, audit trail, storage),
changes one thing, and runs the detector the issue names:

* ``cardprep verify BATCH`` for output files and manifest fields (the
  manifest is MACed under a TK-derived key and lists every file's SHA-256);
* ``cardprep audit verify`` for the audit trail (hash chain, MACs, sealed head);
* both, for a key-store row (the row is used by ``verify`` when it re-derives
  card keys and checks the manifest MAC).

Detected = exit status 1 (verification failed) or 2 (``cardprep: error:``
refusal), with a message naming what is wrong; the untouched clone passes.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli.main import main
from tests.reliability.enginekit import World


@pytest.fixture(scope="module")
def published(template_world: World, tmp_path_factory: pytest.TempPathFactory) -> World:
    world = template_world.clone(tmp_path_factory.mktemp("tamper") / "w")
    sample = world.sample(24, seed=11, errors=0.1)
    assert (
        main(
            [
                "run",
                "--issuer",
                "demo",
                "--file",
                str(sample.path),
                "--settings",
                str(world.settings),
            ]
        )
        == 0
    )
    return world


def _verify(world: World, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``cardprep verify``: (exit status, output); a crash is status 99 with its type."""
    (batch,) = world.batches()
    try:
        rc = main(["verify", str(batch), "--settings", str(world.settings)])
    except Exception as exc:
        out = capsys.readouterr()
        return 99, f"CRASH {type(exc).__module__}.{type(exc).__name__}: {exc}\n{out.err}"
    out = capsys.readouterr()
    return rc, out.out + out.err


def _audit_verify(world: World, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["audit", "verify", "--settings", str(world.settings)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_untouched_clone_verifies(
    published: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = published.clone(tmp_path / "w")
    assert _verify(world, capsys)[0] == 0
    assert _audit_verify(world, capsys)[0] == 0


# --- output bytes ------------------------------------------------------------------------------


def _manifest(world: World) -> dict[str, Any]:
    (batch,) = world.batches()
    return json.loads((batch / "manifest.json").read_text())  # type: ignore[no-any-return]


def _files(world: World) -> list[str]:
    return [f["path"] for f in _manifest(world)["files"]]


OUTPUT_EDITS: dict[str, Callable[[bytes], bytes]] = {
    "flip-middle-byte": lambda b: (
        b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 0x01]) + b[len(b) // 2 + 1 :]
    ),
    "flip-last-byte": lambda b: b[:-1] + bytes([b[-1] ^ 0x80]),
    "append-byte": lambda b: b + b"\n",
    "truncate": lambda b: b[: len(b) - 7],
    "empty": lambda b: b"",
}


# Every file kind the manifest lists for the demo batch (parts, bureau file, rejects).
FILE_KINDS = ["parts/part-00000.parquet", "bureau", "rejects.parquet", "rejects.csv"]
def _output_params() -> list[Any]:
    out = []
    for which in FILE_KINDS:
        for kind in OUTPUT_EDITS:
            out.append(pytest.param(which, kind, id=f"{which}-{kind}"))
    return out


@pytest.mark.parametrize(("which", "kind"), _output_params())
def test_edited_output_file_is_detected(
    published: World, tmp_path: Path, which: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    world = published.clone(tmp_path / "w")
    (batch,) = world.batches()
    matches = [p for p in _files(world) if p.startswith(which)]
    assert matches, f"the batch has no {which} file: {_files(world)}"
    target = batch / matches[0]
    target.write_bytes(OUTPUT_EDITS[kind](target.read_bytes()))
    rc, text = _verify(world, capsys)
    assert rc == 1, f"{which} {kind} not detected cleanly:\n{text}"
    assert matches[0].rsplit("/", 1)[-1] in text


def test_deleted_output_file_is_detected(
    published: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for n, path in enumerate(_files(published)):
        world = published.clone(tmp_path / f"w{n}")
        (batch,) = world.batches()
        (batch / path).unlink()
        rc, text = _verify(world, capsys)
        assert rc != 0 and path.rsplit("/", 1)[-1] in text, text


@pytest.mark.parametrize("name", ["report.json", "report.html"])
def test_edited_report_is_detected(
    published: World, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    world = published.clone(tmp_path / "w")
    (batch,) = world.batches()
    text = (batch / name).read_text()
    (batch / name).write_text(text.replace("prepared", "prepareD", 1))
    assert _verify(world, capsys)[0] != 0


# --- manifest fields -----------------------------------------------------------------------------


def _bump(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return (value[:-1] + ("0" if value[-1:] != "0" else "1")) if value else "x"
    raise AssertionError(type(value))


MANIFEST_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "batch_id": lambda m: m.update(batch_id=_bump(m["batch_id"])),
    "issuer": lambda m: m.update(issuer="demo-csv"),
    "created_at": lambda m: m.update(created_at=_bump(m["created_at"])),
    "counts.in": lambda m: m["counts"].update(**{"in": m["counts"]["in"] + 1}),
    "counts.prepared": lambda m: m["counts"].update(prepared=m["counts"]["prepared"] - 1),
    "counts.rejected": lambda m: m["counts"].update(rejected=m["counts"]["rejected"] + 1),
    "files[0].sha256": lambda m: m["files"][0].update(sha256=_bump(m["files"][0]["sha256"])),
    "files[0].size": lambda m: m["files"][0].update(size=m["files"][0]["size"] + 1),
    "files[0].path": lambda m: m["files"][0].update(path=m["files"][1]["path"]),
    "files[-1] removed": lambda m: m["files"].pop(),
    "keys[0].kcv": lambda m: m["keys"][0].update(kcv=_bump(m["keys"][0]["kcv"])),
    "keys[0].ref": lambda m: m["keys"][0].update(ref=m["keys"][0]["ref"].replace("@v1", "@v2")),
    "input.records": lambda m: m["input"].update(records=m["input"]["records"] + 1),
    "mac.value": lambda m: m["mac"].update(value=_bump(m["mac"]["value"])),
    "mac.key": lambda m: m["mac"].update(key="demo-tk-sm4@v1"),
    "mac removed": lambda m: m.pop("mac"),
    "extra field": lambda m: m.update(note="approved"),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS))
def test_edited_manifest_field_is_detected(
    published: World, tmp_path: Path, edit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    world = published.clone(tmp_path / "w")
    (batch,) = world.batches()
    manifest = json.loads((batch / "manifest.json").read_text())
    MANIFEST_EDITS[edit](manifest)
    (batch / "manifest.json").write_text(json.dumps(manifest, indent=1))
    rc, text = _verify(world, capsys)
    assert rc != 0, f"manifest {edit} not detected:\n{text}"
    assert "manifest" in text.lower()


def test_deleted_manifest_means_not_published(
    published: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = published.clone(tmp_path / "w")
    (batch,) = world.batches()
    (batch / "manifest.json").unlink()
    rc, text = _verify(world, capsys)
    assert rc != 0 and "manifest" in text.lower()


# --- audit trail -------------------------------------------------------------------------------


def _edit_lines(fn: Callable[[list[str]], list[str]]) -> Callable[[World], None]:
    def edit(world: World) -> None:
        lines = world.audit.read_text().splitlines(keepends=True)
        world.audit.write_text("".join(fn(lines)))

    return edit


def _edit_field(lines: list[str], index: int, field: str, value: Any) -> list[str]:
    event = json.loads(lines[index])
    event[field] = value
    lines[index] = json.dumps(event, separators=(",", ":")) + "\n"
    return lines


AUDIT_EDITS: dict[str, Callable[[World], None]] = {
    "actor of a middle line": _edit_lines(
        lambda ls: _edit_field(ls, len(ls) // 2, "actor", "mallory")
    ),
    "result of the last line": _edit_lines(lambda ls: _edit_field(ls, -1, "result", "refused")),
    "details of the first line": _edit_lines(lambda ls: _edit_field(ls, 0, "details", {})),
    "one character in a hash": _edit_lines(
        lambda ls: _edit_field(ls, 3, "hash", _bump(json.loads(ls[3])["hash"]))
    ),
    "a middle line deleted": _edit_lines(lambda ls: ls[: len(ls) // 2] + ls[len(ls) // 2 + 1 :]),
    "two lines swapped": _edit_lines(lambda ls: [ls[1], ls[0], *ls[2:]]),
    "last line dropped (truncation)": _edit_lines(lambda ls: ls[:-1]),
    "a line duplicated": _edit_lines(lambda ls: [*ls, ls[-1]]),
    "a forged line appended": _edit_lines(
        lambda ls: [
            *ls,
            json.dumps(
                {**json.loads(ls[-1]), "seq": json.loads(ls[-1])["seq"] + 1, "actor": "mallory"}
            )
            + "\n",
        ]
    ),
    "whole trail emptied": _edit_lines(lambda ls: []),
    "head sidecar deleted": lambda w: w.audit.with_name(w.audit.name + ".head").unlink(),
}


@pytest.mark.parametrize("edit", list(AUDIT_EDITS))
def test_edited_audit_trail_is_detected(
    published: World, tmp_path: Path, edit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    world = published.clone(tmp_path / "w")
    AUDIT_EDITS[edit](world)
    rc, text = _audit_verify(world, capsys)
    assert rc != 0, f"audit {edit} not detected:\n{text}"


# --- key-store rows ----------------------------------------------------------------------------

KEYSTORE_EDITS: list[Any] = [
    pytest.param("demo-imk-ac", "usage", "'K0'", id="imk-usage"),
    pytest.param("demo-imk-ac", "mode", "'N'", id="imk-mode"),
    pytest.param("demo-imk-ac", "exportability", "'E'", id="imk-exportability"),
    pytest.param("demo-imk-ac", "kcv", "'FFFFFF'", id="imk-kcv"),
    pytest.param(
        "demo-imk-ac",
        "key_block",
        "substr(key_block, 1, 60) || "
        "(CASE substr(key_block, 61, 1) WHEN 'A' THEN 'B' ELSE 'A' END) || "
        "substr(key_block, 62)",
        id="imk-key-block",
    ),
    pytest.param(
        "demo-tk",
        "key_block",
        "substr(key_block, 1, length(key_block) - 1) || "
        "(CASE substr(key_block, -1) WHEN '0' THEN '1' ELSE '0' END)",
        id="tk-key-block-mac",
    ),
    pytest.param("demo-tk", "algorithm", "'aes128'", id="tk-algorithm"),
    pytest.param(
        "demo-issuer-rsa", "public_key", "x'00' || substr(public_key, 2)", id="issuer-public-key"
    ),
    pytest.param("demo-imk-ac", "state", "'retired'", id="imk-state-retired"),
    # Columns the key block does not bind: caught by the row MAC (pipeline/keys/rowmac.py).
    pytest.param("demo-imk-ac", "owner", "'issuer:other'", id="imk-owner"),
    pytest.param("demo-imk-ac", "custodians", "'[\"mallory\"]'", id="imk-custodians"),
    pytest.param("demo-imk-ac", "created_at", "'2020-01-01T00:00:00Z'", id="imk-created-at"),
]


@pytest.mark.parametrize(("label", "column", "expr"), KEYSTORE_EDITS)
def test_edited_key_store_row_is_detected(
    published: World,
    tmp_path: Path,
    label: str,
    column: str,
    expr: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = published.clone(tmp_path / "w")
    with sqlite3.connect(world.keys_db) as db:
        changed = db.execute(
            f"UPDATE keys SET {column} = {expr} WHERE label = ?", (label,)
        ).rowcount
    assert changed == 1
    rc_verify, text_verify = _verify(world, capsys)
    rc_audit, text_audit = _audit_verify(world, capsys)
    assert rc_verify != 0 or rc_audit != 0, (
        f"edited {label}.{column} not detected:\n{text_verify}\n{text_audit}"
    )
    # ... by the row MAC (every column is bound), naming the row, as a refusal not a crash
    assert 99 not in (rc_verify, rc_audit), text_verify
    assert re.search(rf"{label}@v\d+: row (MAC mismatch|unreadable)", text_verify + text_audit), (
        f"{text_verify}\n{text_audit}"
    )


def test_reactivated_suspended_key_is_detected(
    published: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key suspended by an audited action, then set ACTIVE again by editing its row."""
    from pipeline.keys import open_store  # noqa: PLC0415
    from pipeline.keys.settings import load_settings  # noqa: PLC0415

    world = published.clone(tmp_path / "w")
    store = open_store(load_settings(world.settings))
    try:
        store.suspend(store.active("demo-imk-smc"), actor="officer-1", reason="incident")
    finally:
        store.close()
    with sqlite3.connect(world.keys_db) as db:
        db.execute("UPDATE keys SET state = 'active' WHERE label = 'demo-imk-smc'")
    rc_verify, text_verify = _verify(world, capsys)
    rc_audit, text_audit = _audit_verify(world, capsys)
    assert rc_verify != 0 or rc_audit != 0
    assert 99 not in (rc_verify, rc_audit), text_verify
    assert "demo-imk-smc@v1: row MAC mismatch" in text_verify + text_audit, text_verify
