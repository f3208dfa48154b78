"""``cardprep selftest``: demo key KCVs and known-answer checks of the crypto core.

Prints, for each demo key of ``config/demo/keys.yaml``, its label, algorithm,
usage and KCV (with the KCV method: ``tdes`` for 3DES, ``aes-cmac`` for AES,
``sm4`` for SM4) - never key bytes - then re-checks the published known
answers the crypto core is built on (EMV Option A/B, session key, ARQC/ARPC,
KCVs, GP diversification, TR-31 A/B/C/D unwrap, SM4) and prints PASS/FAIL for
each.  Exit status 1 if any check fails.

The vectors are embedded here (not read from ``tests/``) so the self-test is a
power-on test of the installed code; ``tests/vectors/*.json`` carry the same
values with their full sources.

Example:
    $ cardprep selftest
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.crypto.ciphers import Algorithm, BlockCipher
from pipeline.crypto.emv import (
    IccMkDeriver,
    derive_icc_mk,
    derive_session_key,
    derive_session_key_sm4,
    generate_ac_sm4,
    generate_arpc_1,
    generate_arpc_2,
    generate_arqc,
)
from pipeline.crypto.gp import diversify_card_keys
from pipeline.crypto.kcv import kcv, kcv_method_for
from pipeline.crypto.mac import cmac
from pipeline.crypto.tr31 import unwrap, wrap
from pipeline.errors import CardprepError, ConfigError

__all__ = ["DemoKey", "KnownAnswer", "known_answers", "load_demo_keys", "register", "run"]

DEFAULT_KEYS = Path(__file__).resolve().parents[2] / "config" / "demo" / "keys.yaml"


@dataclass(frozen=True)
class DemoKey:
    """One entry of the demo key file (the value never leaves this process)."""

    label: str
    algorithm: Algorithm
    usage: str
    value: bytes

    def __repr__(self) -> str:  # never show the key
        return f"DemoKey({self.label!r}, {self.algorithm.value}, {self.usage})"


@dataclass(frozen=True)
class KnownAnswer:
    """A named check: ``compute()`` must return ``expected`` (hex, upper case)."""

    name: str
    source: str
    compute: Callable[[], str]
    expected: str


def load_demo_keys(path: Path) -> list[DemoKey]:
    """Read ``keys.yaml``; :class:`ConfigError` names the file and the bad entry."""
    try:
        # BaseLoader keeps every scalar a string: an unquoted all-digit hex key
        # such as 1111...2222 must not become an int (and lose leading zeros).
        doc: Any = yaml.load(path.read_text(), Loader=yaml.BaseLoader)  # noqa: S506 - safe loader
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(str(path), "is not valid YAML") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ConfigError(str(path), "expected a mapping with a 'keys' list")
    keys: list[DemoKey] = []
    for i, entry in enumerate(doc["keys"]):
        where = f"{path}: keys[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, "expected a mapping")
        label = str(entry.get("label", f"#{i}"))
        try:
            algorithm = Algorithm(str(entry.get("algorithm")))
        except ValueError:
            raise ConfigError(
                f"{where} ({label})", f"unknown algorithm {entry.get('algorithm')!r}"
            ) from None
        try:
            value = bytes.fromhex(str(entry.get("value", "")))
        except ValueError:
            raise ConfigError(f"{where} ({label})", "value is not hex") from None
        keys.append(DemoKey(label, algorithm, str(entry.get("usage", "")), value))
    return keys


def _h(text: str) -> bytes:
    return bytes.fromhex(text)


_PYEMV = "knovichikhin/pyemv@cf6b82d7 pyemv"
_OPENEMV_TR31 = "openemv/tr31@d230c284 test/tr31_decrypt_test.c"
_PSEC = "knovichikhin/psec@90ccbf3a tests/test_tr31.py"
_IMK = "0123456789ABCDEFFEDCBA9876543210"


def _tr31(kbpk: str, block: str) -> Callable[[], str]:
    return lambda: unwrap(_h(kbpk), block)[1].hex().upper()


def _sm4_cross_check() -> str:
    """SM4 derivation, session key and AC have no published vector: compare two ways."""
    imk = _h(_IMK)
    mk = derive_icc_mk(imk, "6212345678901234", "01", option="sm4")
    y = _h("6212345678901234"[-14:] + "01")
    other = BlockCipher(Algorithm.SM4, imk).encrypt_ecb(y + bytes(b ^ 0xFF for b in y))
    atc = _h("0001")
    sk = derive_session_key_sm4(mk, atc)
    block = _h("000000000000" "0001" "000000000000" "FFFE")
    sk2 = BlockCipher(Algorithm.SM4, other).encrypt_ecb(block)
    data = _h("000000001000000000000000015600000000000156200101009912345678")
    ac = generate_ac_sm4(sk, data)
    ac2 = _sm4_cbc_mac(sk2, data)[:8]
    return "MATCH" if (mk, sk, ac) == (other, sk2, ac2) else "MISMATCH"


def _sm4_cbc_mac(key: bytes, data: bytes) -> bytes:
    """SM4-CBC, zero IV, over data padded 80 00.. (second computation for the self-test)."""
    padded = data + b"\x80" + bytes(-(len(data) + 1) % 16)
    return BlockCipher(Algorithm.SM4, key).encrypt_cbc(padded)[-16:]


def _roundtrip(version: str) -> str:
    kbpk = _h("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6")
    if version == "B":
        kbpk = kbpk[:24]
    key = _h("3F419E1CB7079442AA37474C2EFBF8B8")
    algo = "A" if version == "D" else "T"
    return unwrap(kbpk, wrap(kbpk, f"{version}0000E0{algo}X00N0000", key))[1].hex().upper()


def known_answers() -> list[KnownAnswer]:
    """The self-test's checks, each with its published source."""
    deriver = IccMkDeriver(_h(_IMK), "A")
    return [
        KnownAnswer(
            "EMV ICC MK Option A", f"{_PYEMV}/kd.py derive_icc_mk_a",
            lambda: derive_icc_mk(_h(_IMK), "12345678901234567", "01", "A").hex().upper(),
            "73AD54688CEF2934B0979857E3C719F1",
        ),
        KnownAnswer(
            "EMV ICC MK Option A (IccMkDeriver fast path)", f"{_PYEMV}/kd.py derive_icc_mk_a",
            lambda: deriver.derive("12345678901234567", "01").hex().upper(),
            "73AD54688CEF2934B0979857E3C719F1",
        ),
        KnownAnswer(
            "EMV ICC MK Option B", f"{_PYEMV}/kd.py derive_icc_mk_b",
            lambda: derive_icc_mk(_h(_IMK), "12345678901234567", "01", "B").hex().upper(),
            "AD406D7F6D7570916D75E5DCAB8CF737",
        ),
        KnownAnswer(
            "EMV common session key (A1.3.1)", f"{_PYEMV}/kd.py derive_common_sk",
            lambda: derive_session_key(_h(_IMK), _h("001C000000000000")).hex().upper(),
            "E9FB384AF807B940FEDCEA613461B0C4",
        ),
        KnownAnswer(
            "ARQC (MAC algorithm 3, padding 2)", f"{_PYEMV}/ac.py",
            lambda: generate_arqc(
                _h("29B33180E567CE38EA4CBC9D753B0E61"), _h("0123456789ABCDEF0123456789ABCDEF")
            ).hex().upper(),
            "FA624250B008B59A",
        ),
        KnownAnswer(
            "ARPC method 1", f"{_PYEMV}/ac.py",
            lambda: generate_arpc_1(
                _h("29B33180E567CE38EA4CBC9D753B0E61"), _h("FA624250B008B59A"), _h("0000")
            ).hex().upper(),
            "45D4255EEF10C920",
        ),
        KnownAnswer(
            "ARPC method 2", f"{_PYEMV}/ac.py",
            lambda: generate_arpc_2(
                _h("29B33180E567CE38EA4CBC9D753B0E61"), _h("FA624250B008B59A"), _h("00000000")
            ).hex().upper(),
            "CB56FA40",
        ),
        KnownAnswer(
            "3DES KCV", f"{_PYEMV} tests/test_sm_hsm.py",
            lambda: kcv(_h(_IMK)).hex().upper(), "08D7B4",
        ),
        KnownAnswer(
            "AES KCV (CMAC, X9.24-1 A.3), 5 bytes", f"{_OPENEMV_TR31} test11",
            lambda: kcv(_h("3F419E1CB7079442AA37474C2EFBF8B8"), "aes-cmac", 5).hex().upper(),
            "08793E25AB",
        ),
        KnownAnswer(
            "AES-CMAC (NIST SP 800-38B D.1 example 2)", "NIST SP 800-38B Appendix D.1",
            lambda: cmac(
                Algorithm.AES, _h("2B7E151628AED2A6ABF7158809CF4F3C"),
                _h("6BC1BEE22E409F96E93D7E117393172A"),
            ).hex().upper(),
            "070A16B46B4D4144F79BDD9DD04A287C",
        ),
        KnownAnswer(
            "GP EMV CPS diversification (ENC, MAC, DEK)",
            "OpenJavaCard/openjavacard-tools@ac3df997 GPKeySetTest.java",
            lambda: "".join(
                k.hex().upper()
                for k in diversify_card_keys(_h("404142434445464748494A4B4C4D4E4F"), bytes(10))
            ),
            "5D9A62E01DF1FA7A93F231000F4AC272"
            "13179F2220FC6BCE5E740387EB78DB5C"
            "8BBE5457944D18DF460AF68730F570A2",
        ),
        KnownAnswer(
            "GP kdf3 diversification (AES-256 ENC)",
            "martinpaljak/GlobalPlatformPro TestPlaintextKeys KDF3_ExternalVector",
            lambda: diversify_card_keys(
                _h("8C72C72CF908411653018807950D82FBAD947562F0828A0B10B8B9606ABF3BCD"),
                _h("D9B1DE5D0362DEDCE4FB"), "kdf3",
            )[0].hex().upper(),
            "9AAC5D0B3601F89438A0D9D0B6B256CFB47E6462DFA5228D3420C4AC7C224781",
        ),
        KnownAnswer(
            "TR-31 version A unwrap", f"{_OPENEMV_TR31} test2 (TR-31:2018 A.7.2.1)",
            _tr31("89E88CF7931444F334BD7547FC3F380C",
                  "A0072P0TE00E0000F5161ED902807AF26F1D62263644BD24192FDB3193C730301CEE8701"),
            "F039121BEC83D26B169BDCD5B22AAF8F",
        ),
        KnownAnswer(
            "TR-31 version B unwrap", f"{_OPENEMV_TR31} test3 (TR-31:2018 A.7.2.2)",
            _tr31("DD7515F2BFC17F85CE48F3CA25CB21F6",
                  "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E"),
            "3F419E1CB7079442AA37474C2EFBF8B8",
        ),
        KnownAnswer(
            "TR-31 version C unwrap", f"{_OPENEMV_TR31} test4 (TR-31:2018 A.7.3.1)",
            _tr31("B8ED59E0A279A295E9F5ED7944FD06B9",
                  "C0096B0TX12S0100KS1800604B120F9292800000BFB9B689CB567E66FC3FEE5AD5F52161FC6545"
                  "B9D60989015D02155C"),
            "EDB380DD340BC2620247D445F5B8D678",
        ),
        KnownAnswer(
            "TR-31 version D unwrap", f"{_OPENEMV_TR31} test6 (TR-31:2018 A.7.4)",
            _tr31("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
                  "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A2"
                  "7E8E31DA05F7425509593D03A457DC34"),
            "3F419E1CB7079442AA37474C2EFBF8B8",
        ),
        KnownAnswer(
            "TR-31 version B wrap/unwrap round trip", "self-consistency",
            lambda: _roundtrip("B"), "3F419E1CB7079442AA37474C2EFBF8B8",
        ),
        KnownAnswer(
            "TR-31 version D wrap/unwrap round trip", "self-consistency",
            lambda: _roundtrip("D"), "3F419E1CB7079442AA37474C2EFBF8B8",
        ),
        KnownAnswer(
            "SM4 block (GB/T 32907-2016 A.1 example 1)",
            "openssl test/recipes/30-test_evp_data/evpciph_sm4.txt",
            lambda: BlockCipher(Algorithm.SM4, _h(_IMK)).encrypt_ecb(_h(_IMK)).hex().upper(),
            "681EDF34D206965E86B3E94F536E4246",
        ),
        KnownAnswer(
            "PBOC SM4 MK / session key / AC (two computations agree)",
            "no published vector; DOMAIN.md 3",
            _sm4_cross_check, "MATCH",
        ),
    ]


def run(keys_path: Path = DEFAULT_KEYS, out: Callable[[str], None] = print) -> int:
    """Print the demo key KCVs and the known-answer results; 0 if all pass, else 1."""
    keys = load_demo_keys(keys_path)
    out(f"cardprep selftest - demo keys from {keys_path} (TEST KEYS ONLY)")
    out(f"{'label':<20} {'algorithm':<9} {'usage':<5} {'kcv':<6} method")
    for key in keys:
        method = kcv_method_for(key.algorithm)
        value = kcv(key.value, method).hex().upper()
        out(f"{key.label:<20} {key.algorithm.value:<9} {key.usage:<5} {value:<6} {method.value}")
    out("")
    out("known-answer checks")
    failures = 0
    checks = known_answers()
    for check in checks:
        try:
            ok = check.compute() == check.expected
            detail = ""
        except CardprepError as exc:
            ok, detail = False, f" ({exc})"
        failures += not ok
        out(f"{'PASS' if ok else 'FAIL'}  {check.name}  [{check.source}]{detail}")
    out("")
    out(f"{len(checks) - failures}/{len(checks)} checks passed")
    return 1 if failures else 0


def _command(args: argparse.Namespace) -> int:
    return run(Path(args.keys))


def register(subparsers: Any) -> None:
    """Add the ``selftest`` command."""
    parser = subparsers.add_parser(
        "selftest",
        help="print demo key KCVs and re-check the crypto known answers",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--keys", default=str(DEFAULT_KEYS), help="demo key file (default: %(default)s)"
    )
    parser.set_defaults(func=_command)
