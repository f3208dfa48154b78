"""Issue 4 "Done when": a full key ceremony from config/demo/ceremony-plan.yaml.

Through the ``cardprep`` command line, against a real soft key store whose HMK
enters as components: rehearse the plan (nothing changes), run it (HMK from
three components by three custodians, the issuer KEK imported as a TR-31
block, the bureau TK exported as a TR-31 block, IMKs generated, one rotation,
one scheduled destruction), check ``cardprep audit verify`` passes, then
fails after one audit line is edited.  Plus the refusals: a single custodian
cannot complete a ceremony, a KCV mismatch stores nothing, temporary staff
and consultants cannot be appointed, a custodian cannot hold two components
of one key.  And key output as components of an existing key
(``cardprep keys export --as-components``): the exportable TK goes to three
envelopes whose recombination has the store's KCV; a non-exportable IMK is
refused, and so is one custodian for two components.

The component files are written here into a temporary directory from demo
TEST values (never committed).  No public vector exists for a whole
ceremony; the checks are independent recomputations (the exported TK block
is unwrapped with the bureau ZMK recombined from its envelopes, and its KCV
compared with the store's).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli.main import main
from pipeline.crypto import tr31
from pipeline.crypto.kcv import kcv
from pipeline.keys.components import xor_combine, xor_split
from pipeline.keys.envelopes import read_envelope

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "config" / "demo" / "ceremony-plan.yaml"

# DEMO TEST values; their KCVs are the expected ones written in the plan.
HMK = bytes(range(32))  # KCV 377822C093
ZMK_ISSUER = bytes.fromhex("00112233445566778899AABBCCDDEEFF" * 2)  # KCV 16AF1E
KEK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")  # KCV 08D7B4


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ceremony")
    files, store_dir, out = tmp / "files", tmp / "store", tmp / "out"
    files.mkdir()
    settings = tmp / "settings.yaml"
    settings.write_text(yaml.safe_dump({
        "environment": "demo",
        "key_store": {"backend": "soft", "path": str(store_dir / "keys.db"),
                      "audit_path": str(store_dir / "audit.jsonl"),
                      "hmk": {"source": "components"}},
    }))  # fmt: skip
    hmk_files = []
    for i, part in enumerate(xor_split(HMK, 3), 1):
        (files / f"hmk-{i}.hex").write_text(part.hex().upper() + "\n")
        hmk_files.append(files / f"hmk-{i}.hex")
    for i, part in enumerate(xor_split(ZMK_ISSUER, 2), 1):
        (files / f"zmk-issuer-{i}.hex").write_text(part.hex().upper() + "\n")
    block = tr31.wrap(ZMK_ISSUER, tr31.Header("D", "K0", "T", "B", "00", "N"), KEK)
    (files / "issuer-kek.tr31").write_text(block + "\n")
    (files / "answers.yaml").write_text("'confirm:*': 'yes'\n")
    return {"tmp": tmp, "files": files, "store": store_dir, "out": out, "settings": settings,
            "hmk1": hmk_files[0], "hmk2": hmk_files[1], "hmk3": hmk_files[2]}  # fmt: skip


def _store_args(w: dict[str, Path]) -> list[str]:
    return [
        "--settings",
        str(w["settings"]),
        "--hmk-component-file",
        str(w["hmk1"]),
        "--hmk-component-file",
        str(w["hmk2"]),
        "--hmk-component-file",
        str(w["hmk3"]),
    ]


def _ceremony(w: dict[str, Path], *extra: str) -> int:
    return main(["keys", "ceremony", "--plan", str(PLAN), "--settings", str(w["settings"]),
                 "--files", str(w["files"]), "--answers", str(w["files"] / "answers.yaml"),
                 "--out", str(w["out"]), *extra])  # fmt: skip


def _secrets(w: dict[str, Path]) -> list[str]:
    """Every clear value of the run: test keys, component files, envelope components."""
    values = [HMK.hex(), ZMK_ISSUER.hex(), KEK.hex()]
    values += [p.read_text().strip().lower() for p in w["files"].glob("*.hex")]
    values += [read_envelope(p).value.hex() for p in w["tmp"].rglob("*.envelope")]
    return values


def _no_secret_in(text: str, w: dict[str, Path]) -> None:
    low = text.lower()
    assert not any(v.lower() in low for v in _secrets(w))


@pytest.fixture(scope="module")
def ran(world: dict[str, Path]) -> dict[str, Path]:
    """Rehearse, then run the demo ceremony for real (once for the module)."""
    assert _ceremony(world, "--rehearse") == 0
    assert not (world["store"] / "keys.db").exists(), "a rehearsal must change nothing"
    assert not (world["store"] / "ceremony.sqlite").exists()
    assert _ceremony(world) == 0
    return world


def test_rehearsal_prints_every_step_and_changes_nothing(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    scratch = world["tmp"] / "rehearsal-only-settings.yaml"
    raw = yaml.safe_load(world["settings"].read_text())
    raw["key_store"]["path"] = str(world["tmp"] / "never" / "keys.db")
    scratch.write_text(yaml.safe_dump(raw))
    rc = main(["keys", "ceremony", "--plan", str(PLAN), "--settings", str(scratch), "--files",
               str(world["files"]), "--answers", str(world["files"] / "answers.yaml"),
               "--rehearse"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    steps = yaml.safe_load(PLAN.read_text())["steps"]
    for n in range(1, len(steps) + 1):
        assert f"[rehearsal] step {n}:" in out
    assert "nothing was changed" in out
    assert "KCV 377822C093" in out and "expected 377822C093" in out
    assert not (world["tmp"] / "never").exists()
    _no_secret_in(out, world)


def test_full_ceremony_builds_the_hierarchy(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["keys", "list", *_store_args(ran)]) == 0
    listing = capsys.readouterr().out
    _no_secret_in(listing, ran)
    rows = {(ln.split()[0], ln.split()[1]): ln.split() for ln in listing.splitlines()[1:]}
    assert rows[("demo-kek", "1")][5] == "08D7B4"
    assert rows[("demo-zmk-issuer", "1")][5] == "16AF1E"
    assert rows[("demo-tk", "1")][4] == "active"
    assert rows[("demo-imk-ac", "1")][4] == "destroy-pending"
    assert rows[("demo-imk-ac", "2")][4] == "active"
    for label in ("demo-imk-smi", "demo-imk-smc", "demo-zmk-bureau"):
        assert rows[(label, "1")][4] == "active"
    assert main(["keys", "show", "demo-zmk-issuer", *_store_args(ran)]) == 0
    shown = capsys.readouterr().out
    assert "custodians:     alice, bob" in shown


def test_hmk_held_by_three_custodians(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for who, slot in (("alice", 1), ("bob", 2), ("carol", 3)):
        assert main(["custodians", "show", who, *_store_args(ran)]) == 0
        assert f"holds component {slot} of hmk@v1" in capsys.readouterr().out


def test_exported_tk_block_opens_with_bureau_zmk_from_envelopes(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    envelopes = sorted((ran["out"] / "envelopes" / "demo-zmk-bureau@v1").glob("*.envelope"))
    contents = [read_envelope(p) for p in envelopes]
    assert [c.custodian for c in contents] == ["alice", "bob", "carol"]
    zmk = xor_combine([c.value for c in contents])
    assert kcv(zmk, "aes-cmac").hex().upper() == contents[0].key_kcv
    block = (ran["out"] / "bureau-tk.tr31").read_text().strip()
    header, tk = tr31.unwrap(zmk, block)
    assert (header.version, header.key_usage, header.algorithm) == ("D", "K0", "T")
    capsys.readouterr()
    main(["keys", "show", "demo-tk", *_store_args(ran)])
    assert f"kcv:            {kcv(tk).hex().upper()} (tdes)" in capsys.readouterr().out


def test_envelope_sign_off_in_the_cli(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["custodians", "envelopes", "--key", "demo-zmk-bureau@v1", *_store_args(ran)]) == 0
    serial = capsys.readouterr().out.split()[0]
    assert main(["custodians", "sign-off", serial, "--event", "handed-over", "--by", "alice",
                 *_store_args(ran)]) == 0  # fmt: skip
    assert (
        main(
            [
                "custodians",
                "sign-off",
                serial,
                "--event",
                "opened",
                "--by",
                "carol",
                *_store_args(ran),
            ]
        )
        == 2
    )  # fmt: skip  (carol is neither addressee nor backup)


def _export_components(w: dict[str, Path], key: str, out: Path, *custodians: str) -> int:
    held = [arg for c in custodians for arg in ("--custodian", c)]
    return main(["keys", "export", "--as-components", *held, "--by", "km1", "--witness", "aud1",
                 "--out", str(out), key, *_store_args(w)])  # fmt: skip


def test_export_existing_key_as_components(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The exportable bureau TK out as 3 envelopes; recombined here, its KCV is the store's."""
    out = ran["tmp"] / "tk-out"
    capsys.readouterr()
    assert _export_components(ran, "demo-tk@v1", out, "alice", "bob", "carol") == 0
    printed = capsys.readouterr().out
    assert "exported demo-tk@v1 (tdes2 K0, active)" in printed
    envelopes = sorted((out / "envelopes" / "demo-tk@v1").glob("*.envelope"))
    contents = [read_envelope(p) for p in envelopes]
    assert [(c.custodian, c.slot, c.count, c.scheme) for c in contents] == [
        ("alice", 1, 3, "xor"), ("bob", 2, 3, "xor"), ("carol", 3, 3, "xor")]  # fmt: skip
    for c in contents:
        assert c.component_kcv == kcv(c.value).hex().upper()
        assert f"envelope {c.serial} for {c.custodian}: component {c.slot}, KCV " in printed
    tk = xor_combine([c.value for c in contents])
    main(["keys", "show", "demo-tk@v1", *_store_args(ran)])
    assert f"kcv:            {kcv(tk).hex().upper()} (tdes)" in capsys.readouterr().out
    assert {c.key_kcv for c in contents} == {kcv(tk).hex().upper()}
    _no_secret_in(printed, ran)
    assert main(["custodians", "envelopes", "--key", "demo-tk@v1", *_store_args(ran)]) == 0
    log = capsys.readouterr().out
    assert all(f"{c.serial}" in log for c in contents) and log.count("created") >= 3
    # The holders are on the ledger: carol now holds component 3 of demo-tk.
    assert main(["custodians", "show", "carol", *_store_args(ran)]) == 0
    assert "holds component 3 of demo-tk@v1" in capsys.readouterr().out
    # Carol's envelope through its whole signed-off life; destroyed, the file is gone.
    carol = contents[2]
    for event, extra in (("handed-over", []), ("opened", []), ("destroyed", ["--witness", "km1"])):
        assert main(["custodians", "sign-off", carol.serial, "--event", event, "--by", "carol",
                     *extra, *_store_args(ran)]) == 0  # fmt: skip
    assert not envelopes[2].exists()
    capsys.readouterr()
    main(["custodians", "envelopes", "--key", "demo-tk@v1", "--events", *_store_args(ran)])
    log = capsys.readouterr().out
    assert f"for carol      kcv {carol.component_kcv}  destroyed" in log
    assert "destroyed    by carol witness km1" in log
    assert carol.value.hex() not in (ran["store"] / "audit.jsonl").read_text().lower()


def test_refusal_export_components_non_exportable_or_one_custodian_twice(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = ran["tmp"] / "refused-out"
    capsys.readouterr()
    assert _export_components(ran, "demo-imk-smi", out, "alice", "bob") == 2
    assert "demo-imk-smi@v1: usage E2 exportability N does not permit export" in (
        capsys.readouterr().err
    )
    assert _export_components(ran, "demo-tk", out, "alice", "bob", "alice") == 2
    assert "'alice' cannot hold two components of demo-tk" in capsys.readouterr().err
    assert not out.exists() or not list(out.rglob("*.envelope"))
    main(["audit", "show", "--action", "key.export_components", *_store_args(ran)])
    shown = capsys.readouterr().out
    assert "demo-imk-smi@v1" in shown and "refused" in shown
    assert main(["audit", "verify", *_store_args(ran)]) == 0
    trail = (ran["store"] / "audit.jsonl").read_text()
    _no_secret_in(trail, ran)
    (ok,) = [json.loads(x) for x in trail.splitlines()
             if '"key.export_components"' in x and '"result":"ok"' in x]  # fmt: skip
    assert ok["details"]["custodians"] == ["alice", "bob", "carol"]
    assert len(ok["details"]["component_kcvs"]) == 3


def test_refusal_single_custodian_cannot_complete_a_ceremony(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    solo = ran["tmp"] / "solo.yaml"
    solo.write_text(
        yaml.safe_dump(
            {
                "ceremony": "solo",
                "officer": "km1",
                "witness": "km1",
                "steps": [{"action": "rotate", "label": "demo-imk-ac"}],
            }
        )
    )
    rc = main(["keys", "ceremony", "--plan", str(solo), *_store_args(ran)])
    assert rc == 2 and "dual control" in capsys.readouterr().err
    rc = main(["keys", "rotate", "demo-imk-smi", "--by", "km1", "--witness", "km1",
               *_store_args(ran)])  # fmt: skip
    assert rc == 2 and "dual control" in capsys.readouterr().err
    main(["keys", "show", "demo-imk-smi", *_store_args(ran)])
    assert "demo-imk-smi@v1" in capsys.readouterr().out  # no v2 was made


def test_refusal_kcv_mismatch_stores_nothing(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files = ran["files"]
    rc = main(["keys", "import", "demo-kek-2", "--algorithm", "tdes2", "--usage", "K0", "--role",
               "kek", "--owner", "issuer:demo", "--sender", "issuer:demo", "--kcv", "ABCDEF",
               "--component-file", str(files / "zmk-issuer-1.hex"),
               "--component-file", str(files / "zmk-issuer-2.hex"),
               "--custodian", "alice", "--custodian", "bob", "--by", "km1", "--witness", "aud1",
               "--answers", str(files / "answers.yaml"), *_store_args(ran)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "must be 16 bytes" in err  # 32-byte components for a 16-byte key
    tdes_parts = xor_split(KEK, 2)
    for i, p in enumerate(tdes_parts, 1):
        (files / f"kek2-{i}.hex").write_text(p.hex())
    rc = main(["keys", "import", "demo-kek-2", "--algorithm", "tdes2", "--usage", "K0", "--role",
               "kek", "--owner", "issuer:demo", "--sender", "issuer:demo", "--kcv", "ABCDEF",
               "--component-file", str(files / "kek2-1.hex"),
               "--component-file", str(files / "kek2-2.hex"),
               "--custodian", "alice", "--custodian", "bob", "--by", "km1", "--witness", "aud1",
               "--answers", str(files / "answers.yaml"), *_store_args(ran)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "KCV mismatch for demo-kek-2: combined 08D7B4, expected ABCDEF" in err
    main(["keys", "list", *_store_args(ran)])
    assert "demo-kek-2" not in capsys.readouterr().out
    main(["audit", "show", "--action", "ceremony.discrepancy", *_store_args(ran)])
    shown = capsys.readouterr().out
    assert "demo-kek-2" in shown and '"sender":"issuer:demo"' in shown


def test_refusal_key_block_kcv_mismatch_stores_nothing(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["keys", "import", "demo-kek-3", "--key-block", str(ran["files"] / "issuer-kek.tr31"),
         "--kbpk", "demo-zmk-issuer", "--role", "kek", "--owner", "issuer:demo", "--kcv",
         "000000", "--sender", "issuer:demo", "--by", "km1", "--witness", "aud1",
         *_store_args(ran)]
    )  # fmt: skip
    assert rc == 2 and "KCV mismatch" in capsys.readouterr().err
    main(["keys", "list", *_store_args(ran)])
    assert "demo-kek-3" not in capsys.readouterr().out
    main(["audit", "show", "--action", "ceremony.discrepancy", *_store_args(ran)])
    assert '"kind":"key-block"' in capsys.readouterr().out


@pytest.mark.parametrize("employment", ["temporary", "consultant"])
def test_refusal_temporary_and_consultant_cannot_be_appointed(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str], employment: str
) -> None:
    rc = main(["custodians", "appoint", "tmp1", "--name", "Temp Person", "--role", "custodian",
               "--employment", employment, "--backup", "dave", "--by", "km1",
               *_store_args(ran)])  # fmt: skip
    assert rc == 2 and f"{employment} staff cannot be appointed" in capsys.readouterr().err
    main(["custodians", "list", "--all", *_store_args(ran)])
    assert "tmp1" not in capsys.readouterr().out


def test_refusal_custodian_cannot_hold_two_components(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files = ran["files"]
    common = [
        "--algorithm",
        "aes256",
        "--usage",
        "K1",
        "--role",
        "kbpk",
        "--owner",
        "issuer:demo",
        "--sender",
        "issuer:demo",
        "--kcv",
        "16AF1E",
        "--component-file",
        str(files / "zmk-issuer-1.hex"),
        "--component-file",
        str(files / "zmk-issuer-2.hex"),
        "--by",
        "km1",
        "--witness",
        "aud1",
        "--answers",
        str(files / "answers.yaml"),
        *_store_args(ran),
    ]
    rc = main(["keys", "import", "demo-zmk-issuer", "--custodian", "alice", "--custodian",
               "alice", *common])  # fmt: skip
    assert rc == 2 and "'alice' cannot hold two components" in capsys.readouterr().err
    # across versions: alice held component 1 of v1, so she cannot take component 2 of v2
    rc = main(["keys", "import", "demo-zmk-issuer", "--custodian", "bob", "--custodian",
               "alice", *common])  # fmt: skip
    assert rc == 2 and "'bob' holds component 2 of demo-zmk-issuer@v1" in capsys.readouterr().err
    main(["keys", "list", *_store_args(ran)])
    assert "demo-zmk-issuer             2" not in capsys.readouterr().out


def test_zz_audit_verify_passes_then_fails_after_one_edit(
    ran: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Named zz_ so that it runs last in the module (it breaks the trail)."""
    capsys.readouterr()
    assert main(["audit", "verify", *_store_args(ran)]) == 0
    assert "audit trail OK" in capsys.readouterr().out
    trail = ran["store"] / "audit.jsonl"
    text = trail.read_text()
    _no_secret_in(text, ran)
    lines = text.splitlines()
    events = [json.loads(x) for x in lines]
    assert {"alice", "bob", "carol"} <= {e["actor"] for e in events}
    assert any(e["action"] == "key.rotate" for e in events)
    assert any(e["action"] == "key.schedule_destruction" for e in events)
    i = next(n for n, e in enumerate(events) if e["action"] == "key.import_key_block")
    edited = dict(events[i], actor="mallory")
    lines[i] = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    trail.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", *_store_args(ran)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and f"line {i + 1}" in out and "content edited" in out
