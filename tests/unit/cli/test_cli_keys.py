"""``cardprep keys | custodians | audit`` against a demo (passphrase HMK) soft store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli.main import main
from pipeline.crypto import tr31
from pipeline.crypto.kcv import kcv
from pipeline.keys.components import Share, shamir_combine, xor_combine, xor_split
from pipeline.keys.custodians import (
    CustodianRegistry,
    CustodianRole,
    EmploymentType,
    ceremony_db_path,
)
from pipeline.keys.envelopes import read_envelope
from pipeline.keys.hmk import hmk_kcv

R, E = CustodianRole, EmploymentType


def _settings(tmp: Path, source: str = "passphrase_file") -> Path:
    (tmp / "pass.txt").write_text("demo passphrase for tests only\n")
    path = tmp / "settings.yaml"
    path.write_text(yaml.safe_dump({
        "environment": "demo",
        "key_store": {"backend": "soft", "path": str(tmp / "store" / "keys.db"),
                      "audit_path": str(tmp / "store" / "audit.jsonl"),
                      "hmk": {"source": source, "passphrase_file": str(tmp / "pass.txt")}},
    }))  # fmt: skip
    return path


def _staff(store_dir: Path) -> None:
    """A registry as restored from a backup (appointed without an audit trail)."""
    reg = CustodianRegistry(ceremony_db_path(store_dir))
    reg.appoint("km1", "Kim", R.KEY_MANAGER, E.EMPLOYEE, backup="aud1", appointed_by="board")
    reg.appoint("aud1", "Ann", R.AUDITOR, E.EMPLOYEE, backup="km1", appointed_by="km1")
    for cid, backup in (("alice", "bob"), ("bob", "carol"), ("carol", "alice")):
        reg.appoint(cid, cid.title(), R.CUSTODIAN, E.EMPLOYEE, backup=backup, appointed_by="km1")
    reg.close()


@pytest.fixture
def demo(tmp_path: Path) -> list[str]:
    settings = _settings(tmp_path)
    assert main(["keys", "init", "--settings", str(settings)]) == 0
    _staff(tmp_path / "store")
    return ["--settings", str(settings)]


DUAL = ["--by", "km1", "--witness", "aud1"]


def _gen(demo: list[str], label: str, *extra: str) -> int:
    return main(
        [
            "keys",
            "generate",
            label,
            "--algorithm",
            "tdes2",
            "--usage",
            "K0",
            "--role",
            "tk",
            "--owner",
            "bureau:demo",
            *DUAL,
            *demo,
            *extra,
        ]
    )


def test_init_refuses_existing_store(demo: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", *demo]) == 2
    assert "already exists" in capsys.readouterr().err


def test_generate_list_show(demo: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _gen(demo, "demo-tk", "--mode-of-use", "B") == 0
    capsys.readouterr()
    assert main(["keys", "list", *demo]) == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("demo-tk")]
    label, version, algo, usage, state, kcv_hex, owner = line.split()
    assert (label, version, algo, usage, state, owner) == (
        "demo-tk", "1", "tdes2", "K0", "active", "bureau:demo")  # fmt: skip
    assert len(kcv_hex) == 6
    assert main(["keys", "show", "demo-tk@v1", *demo]) == 0
    shown = capsys.readouterr().out
    assert "mode of use:    B" in shown and f"kcv:            {kcv_hex} (tdes)" in shown


def test_lifecycle_commands(demo: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _gen(demo, "demo-tk") == 0
    assert main(["keys", "rotate", "demo-tk", *DUAL, *demo]) == 0
    assert main(["keys", "suspend", "demo-tk@v2", "--reason", "test", *DUAL, *demo]) == 0
    assert main(["keys", "resume", "demo-tk@v2", *DUAL, *demo]) == 0
    assert main(["keys", "destroy", "demo-tk@v1", "--wait-days", "3", *DUAL, *demo]) == 0
    assert "destroy-pending" in capsys.readouterr().out
    assert main(["keys", "destroy", "demo-tk@v1", "--now", *DUAL, *demo]) == 2
    assert "waiting period" in capsys.readouterr().err
    assert main(["keys", "restore", "demo-tk@v1", *DUAL, *demo]) == 0
    capsys.readouterr()
    main(["keys", "list", *demo])
    states = {ln.split()[1]: ln.split()[4] for ln in capsys.readouterr().out.splitlines()
              if ln.startswith("demo-tk")}  # fmt: skip
    assert states == {"1": "deactivated", "2": "active"}


def test_unknown_or_single_custodian_refused(
    demo: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "keys",
                "generate",
                "x",
                "--algorithm",
                "tdes2",
                "--usage",
                "K0",
                "--role",
                "tk",
                "--owner",
                "o",
                "--by",
                "zed",
                "--witness",
                "aud1",
                *demo,
            ]
        )
        == 2
    )
    assert "unknown custodian 'zed'" in capsys.readouterr().err
    assert main(["keys", "rotate", "demo-tk", "--by", "km1", "--witness", "km1", *demo]) == 2
    assert "dual control" in capsys.readouterr().err


def test_generate_as_components_then_export_and_import(
    demo: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "keys",
            "generate",
            "zmk",
            "--algorithm",
            "aes256",
            "--usage",
            "K1",
            "--role",
            "kbpk",
            "--owner",
            "bureau:demo",
            "--exportability",
            "N",
            "--as-components",
            "--custodian",
            "alice",
            "--custodian",
            "bob",
            "--out",
            str(out),
            *DUAL,
            *demo,
        ]
    )
    assert rc == 0
    envelopes = sorted(out.rglob("*.envelope"))
    zmk = xor_combine([read_envelope(p).value for p in envelopes])
    assert _gen(demo, "demo-tk") == 0
    block_file = tmp_path / "tk.tr31"
    assert (
        main(["keys", "export", "demo-tk", "--kbpk", "zmk", "--out", str(block_file), *DUAL, *demo])
        == 0
    )
    header, tk_value = tr31.unwrap(zmk, block_file.read_text().strip())
    assert header.key_usage == "K0"
    capsys.readouterr()
    main(["keys", "list", *demo])
    rows = {ln.split()[0]: ln.split()[5] for ln in capsys.readouterr().out.splitlines()[1:]}
    assert rows["demo-tk"] == kcv(tk_value, "tdes").hex().upper()  # the block holds demo-tk
    # Entering it again in the same store is refused: one key value, one purpose.
    rc = main(
        [
            "keys",
            "import",
            "demo-tk-copy",
            "--key-block",
            str(block_file),
            "--kbpk",
            "zmk",
            "--role",
            "tk",
            "--owner",
            "bureau:other",
            "--sender",
            "bureau:demo",
            *DUAL,
            *demo,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "demo-tk-copy@v1" in err and "already stored as demo-tk@v" in err
    assert tk_value.hex().upper() not in err.upper()


def test_import_components_with_answers(
    demo: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    files = []
    for i, part in enumerate(xor_split(key, 3), 1):
        (tmp_path / f"p{i}.hex").write_text(part.hex())
        files += ["--component-file", str(tmp_path / f"p{i}.hex")]
    answers = tmp_path / "answers.yaml"
    answers.write_text("'confirm:demo-kek:*': 'yes'\n")
    import_kek = [
        "keys", "import", "demo-kek", "--algorithm", "tdes2", "--usage", "K0",
        "--role", "kek", "--owner", "issuer:demo", "--sender", "issuer:demo",
        "--kcv", "08D7B4", *files,
        "--custodian", "alice", "--custodian", "bob", "--custodian", "carol",
        "--answers", str(answers), *DUAL, *demo,
    ]  # fmt: skip
    rc = main(import_kek)
    assert rc == 0
    assert "entered demo-kek@v1 (tdes2 K0, active) kcv=08D7B4" in capsys.readouterr().out
    answers.write_text("'confirm:demo-kek:*': 'no'\n")
    rc = main(import_kek)
    assert rc == 2 and "alice did not confirm" in capsys.readouterr().err


def test_custodians_and_audit_commands(demo: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "custodians",
                "appoint",
                "dave",
                "--name",
                "Dave",
                "--role",
                "backup",
                "--employment",
                "contractor",
                "--backup",
                "alice",
                "--by",
                "km1",
                *demo,
            ]
        )
        == 0
    )
    assert main(["custodians", "revoke", "dave", "--by", "km1", "--reason", "moved", *demo]) == 0
    assert (
        main(["custodians", "set-backup", "alice", "--backup", "carol", "--by", "km1", *demo]) == 0
    )
    capsys.readouterr()
    assert main(["custodians", "list", *demo]) == 0
    assert "dave" not in capsys.readouterr().out
    assert main(["custodians", "list", "--all", *demo]) == 0
    assert "revoked" in capsys.readouterr().out
    assert _gen(demo, "demo-tk") == 0
    capsys.readouterr()
    assert main(["audit", "show", "--actor", "km1", *demo]) == 0
    shown = capsys.readouterr().out
    assert "custodian.appoint" in shown and "custodian.revoke" in shown
    assert "km1+aud1" in shown and "key.generate" in shown
    assert main(["audit", "verify", *demo]) == 0


def test_init_from_components(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path, source="components")
    _staff(tmp_path / "store")
    hmk = bytes(range(32))
    args = []
    for i, (who, part) in enumerate(zip(("alice", "bob"), xor_split(hmk, 2), strict=True), 1):
        (tmp_path / f"h{i}").write_text(part.hex())
        args += ["--component-file", str(tmp_path / f"h{i}"), "--custodian", who]
    answers = tmp_path / "a.yaml"
    answers.write_text("'confirm:*': 'yes'\n")
    rc = main(
        [
            "keys",
            "init",
            "--settings",
            str(settings),
            *args,
            "--kcv",
            hmk_kcv(hmk).hex(),
            *DUAL,
            "--answers",
            str(answers),
        ]
    )
    assert rc == 0
    hmk_args = ["--hmk-component-file", str(tmp_path / "h1"),
                "--hmk-component-file", str(tmp_path / "h2")]  # fmt: skip
    assert main(["audit", "verify", "--settings", str(settings), *hmk_args]) == 0
    assert (
        main(
            [
                "keys",
                "list",
                "--settings",
                str(settings),
                "--hmk-component-file",
                str(tmp_path / "h1"),
            ]
        )
        == 2
    )
    assert "2..3 components" in capsys.readouterr().err


def test_export_as_components(
    demo: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``keys export --as-components``: envelopes recombine to a key with the listed KCV."""
    assert _gen(demo, "demo-tk") == 0
    out = tmp_path / "envs"
    held = ["--custodian", "alice", "--custodian", "bob"]
    capsys.readouterr()
    rc = main(["keys", "export", "demo-tk", "--as-components", *held, "--out", str(out),
               *DUAL, *demo])  # fmt: skip
    assert rc == 0
    contents = [read_envelope(p) for p in sorted(out.rglob("*.envelope"))]
    assert [c.custodian for c in contents] == ["alice", "bob"]
    key = xor_combine([c.value for c in contents])
    assert not any(c.value.hex().upper() in capsys.readouterr().out for c in contents)
    main(["keys", "list", *demo])
    rows = {ln.split()[0]: ln.split()[5] for ln in capsys.readouterr().out.splitlines()[1:]}
    assert rows["demo-tk"] == kcv(key).hex().upper() == contents[0].key_kcv


def test_export_as_components_shamir(
    demo: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _gen(demo, "demo-tk") == 0
    out = tmp_path / "shares"
    held = ["--custodian", "alice", "--custodian", "bob", "--custodian", "carol"]
    rc = main(["keys", "export", "demo-tk@v1", "--as-components", "--threshold", "2", *held,
               "--out", str(out), *DUAL, *demo])  # fmt: skip
    assert rc == 0
    contents = [read_envelope(p) for p in sorted(out.rglob("*.envelope"))]
    assert [(c.slot, c.threshold, c.scheme) for c in contents] == [
        (1, 2, "shamir"), (2, 2, "shamir"), (3, 2, "shamir")]  # fmt: skip
    key = shamir_combine([Share(c.slot, c.value) for c in contents[1:]], 2)
    assert kcv(key).hex().upper() == contents[0].key_kcv


def test_export_option_refusals(
    demo: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the default envelope directory is the current one
    assert _gen(demo, "demo-tk") == 0
    capsys.readouterr()
    rc = main(["keys", "export", "demo-tk", "--as-components", "--kbpk", "x", "--custodian",
               "alice", "--custodian", "bob", *DUAL, *demo])  # fmt: skip
    assert rc == 2 and "no --kbpk" in capsys.readouterr().err
    rc = main(["keys", "export", "demo-tk", "--out", str(tmp_path / "b"), *DUAL, *demo])
    assert rc == 2 and "needs --kbpk and --out" in capsys.readouterr().err
    rc = main(["keys", "export", "demo-tk", "--kbpk", "x", "--out", str(tmp_path / "b"),
               "--custodian", "alice", *DUAL, *demo])  # fmt: skip
    assert rc == 2 and "go with --as-components" in capsys.readouterr().err
    rc = main(["keys", "export", "demo-tk", "--as-components", "--custodian", "alice",
               *DUAL, *demo])  # fmt: skip
    assert rc == 2 and "2..3 custodians, got 1" in capsys.readouterr().err
    assert not (tmp_path / "envelopes").exists()


def test_a_missing_or_bad_option_is_named_as_the_option_not_as_a_plan_field(
    demo: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in (1, 2):
        (tmp_path / f"p{i}.hex").write_text("00" * 16)
    components = ["--component-file", str(tmp_path / "p1.hex"), "--custodian", "alice",
                  "--component-file", str(tmp_path / "p2.hex"), "--custodian", "bob"]  # fmt: skip
    tk = ["--algorithm", "tdes2", "--usage", "K0", "--role", "tk", "--owner", "bureau:demo"]
    cases = [
        (["keys", "import", "k1", *tk, *components, "--sender", "x:y"],
         "cardprep: error: options: enter-key needs --kcv"),
        (["keys", "import", "k1", *components, "--kcv", "ABCDEF", "--sender", "x:y"],
         "cardprep: error: options: enter-key needs --algorithm, --usage, --role, --owner"),
        (["keys", "import", "k1", *tk, *components, "--kcv", "XYZ", "--sender", "x:y"],
         "cardprep: error: --kcv: expected hex digits, got 'XYZ'"),
        (["keys", "generate", "k1", *tk, "--as-components"],
         "cardprep: error: options: generate-components needs --custodian"),
        (["keys", "destroy", "k1", "--wait-days", "-5"],
         "cardprep: error: --wait-days: expected a non-negative integer: -5"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main([*argv, *DUAL, *demo]) == 2
        err = capsys.readouterr().err
        assert message in err, argv
        assert "steps[" not in err and "None" not in err
