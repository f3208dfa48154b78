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


def open_store(settings: Settings, **options: Any) -> KeyStore:
    """Open the backend ``settings.key_store.backend`` names.

    soft: :meth:`pipeline.keys.soft.SoftKeyStore.from_settings` (refuses
    production); pkcs11: ``pipeline.keys.pkcs11.Pkcs11KeyStore.from_settings``.
    ``options`` are passed to the backend's ``from_settings``.
    """
    if settings.key_store.backend is Backend.PKCS11:
        from pipeline.keys import pkcs11  # noqa: PLC0415 (optional dependency)

        factory = getattr(pkcs11.Pkcs11KeyStore, "from_settings", None)
        if factory is None:
            raise ConfigError(
                "key_store.backend",
                "pkcs11: Pkcs11KeyStore.from_settings is not available; construct "
                "Pkcs11KeyStore(library, token_label, pin, audit=...) directly",
            )
        store: KeyStore = factory(settings, **options)
        return store
    from pipeline.keys.soft import SoftKeyStore  # noqa: PLC0415 (import cost)

    return SoftKeyStore.from_settings(settings, **options)
