"""Fixtures for integration tests against a real SoftHSM2 token.

One token per test session, initialised in a temporary directory with its own
``SOFTHSM2_CONF`` (``softhsm2-util --init-token --free``), so nothing touches
the machine's default token directory.  The PKCS#11 module reads
``SOFTHSM2_CONF`` once, at its first ``C_Initialize`` in the process, which is
why the fixture is session-scoped and sets the variable before any store is
opened.

The tests skip only when SoftHSM2 is not installed (with the reason); in CI
``test_softhsm_is_installed_in_ci`` fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.keys.pkcs11 import Pkcs11KeyStore

TOKEN_LABEL = "cardprep-test"
SO_PIN = "87654321"
USER_PIN = "246810"

_LIBRARY_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def softhsm_library() -> str | None:
    """Path of libsofthsm2.so (``SOFTHSM2_LIB`` overrides), or None if not installed."""
    override = os.environ.get("SOFTHSM2_LIB")
    if override:
        return override
    return next((p for p in _LIBRARY_CANDIDATES if Path(p).exists()), None)


@dataclass
class Token:
    """A freshly initialised SoftHSM2 token: where it lives and how to log in."""

    library: str
    label: str
    pin: str
    conf: Path


@dataclass
class AuditRecorder:
    """Stands in for ``AuditTrail.append``: keeps events; can be told to fail."""

    events: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, actor: str, action: str, subject: str, result: str, **details: Any) -> None:
        if self.fail:
            raise OSError("audit trail not writable")
        self.events.append(
            {"actor": actor, "action": action, "subject": subject, "result": result, **details}
        )


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Token:
    """Initialise a SoftHSM2 token in a temporary directory (skip if SoftHSM2 is absent)."""
    util = shutil.which("softhsm2-util")
    library = softhsm_library()
    if util is None or library is None:
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2; tests/setup.sh does)")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\n"
        "objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [util, "--init-token", "--free", "--label", TOKEN_LABEL,
         "--so-pin", SO_PIN, "--pin", USER_PIN],
        check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )  # fmt: skip
    return Token(library=library, label=TOKEN_LABEL, pin=USER_PIN, conf=conf)


@pytest.fixture(scope="session")
def audit() -> AuditRecorder:
    return AuditRecorder()


@pytest.fixture(scope="session")
def store(softhsm_token: Token, audit: AuditRecorder) -> Iterator[Pkcs11KeyStore]:
    """One Pkcs11KeyStore over the session's token (tests use unique labels)."""
    s = Pkcs11KeyStore(softhsm_token.library, softhsm_token.label, softhsm_token.pin, audit=audit)
    yield s
    s.close()
