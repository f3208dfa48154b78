"""Key management: the key model, the KeyStore protocol and its backends.

Callers hold :class:`KeyRef` values only.  Open the configured backend with
:func:`open_store`.

Example:
    >>> from pipeline.keys.settings import load_settings   # doctest: +SKIP
    >>> store = open_store(load_settings())                 # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.keys.model import (
    DerivationMethod,
    Exportability,
    IccKeyPair,
    IssuerCertificateRecord,
    KeyAlgorithm,
    KeyRecord,
    KeyRef,
    KeyRole,
    KeyState,
    KeyUsage,
    WrappedKey,
)
from pipeline.keys.settings import Backend, Settings
from pipeline.keys.store import KeyStore

__all__ = [
    "DerivationMethod",
    "Exportability",
    "IccKeyPair",
    "IssuerCertificateRecord",
    "KeyAlgorithm",
    "KeyRecord",
    "KeyRef",
    "KeyRole",
    "KeyState",
    "KeyStore",
    "KeyUsage",
    "WrappedKey",
    "open_store",
]


def open_store(settings: Settings, *, secret: bytes | None = None, **options: Any) -> KeyStore:
    """Open the backend ``settings.key_store.backend`` names.

    soft: :meth:`pipeline.keys.soft.SoftKeyStore.from_settings` (refuses
    production); pkcs11: ``pipeline.keys.pkcs11.Pkcs11KeyStore.from_settings``.
    ``secret`` is the store's log-in secret handed over by the caller (e.g.
    the Airflow Connection ``cardprep_keystore`` password): the soft store's
    demo passphrase, or the PKCS#11 user PIN (UTF-8).  It replaces the file
    the settings name, and is never logged nor put in an error.
    ``options`` are passed to the backend's ``from_settings``.

    Example:
        >>> open_store(load_settings(), secret=b"from a vault")  # doctest: +SKIP
    """
    if secret is not None and ("pin" in options or "passphrase" in options):
        raise ConfigError("secret", "give the secret once: secret= or pin=/passphrase=, not both")
    if settings.key_store.backend is Backend.PKCS11:
        from pipeline.keys import pkcs11  # noqa: PLC0415 (optional dependency)

        factory = getattr(pkcs11.Pkcs11KeyStore, "from_settings", None)
        if factory is None:
            raise ConfigError(
                "key_store.backend",
                "pkcs11: Pkcs11KeyStore.from_settings is not available; construct "
                "Pkcs11KeyStore(library, token_label, pin, audit=...) directly",
            )
        if secret is not None:
            options["pin"] = _pin_text(secret)
        store: KeyStore = factory(settings, **options)
        return store
    from pipeline.keys.soft import SoftKeyStore  # noqa: PLC0415 (import cost)

    if secret is not None:
        options["passphrase"] = secret
    return SoftKeyStore.from_settings(settings, **options)


def _pin_text(secret: bytes) -> str:
    """The PKCS#11 PIN as text (PKCS#11 v2.40 section 5.1: UTF-8 characters)."""
    try:
        return secret.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("secret", "the PKCS#11 PIN is not UTF-8 text") from None
