"""KeyStoreHook: Airflow Connection ``cardprep_keystore`` -> an open cardprep key store.

The Connection carries (all optional):

* ``password``: the key store's log-in secret: the PKCS#11 user PIN
  (pkcs11 backend) or the demo HMK passphrase (soft backend; it then
  replaces ``key_store.hmk.passphrase_file``).  It goes straight to
  ``pipeline.keys.open_store(settings, secret=...)`` and nowhere else: this
  module never formats it, never logs it, never returns it in XCom.  It is
  also registered with Airflow's masker (``mask_secret``) as a second line of
  defence, but we do not rely on masking: ``airflow dags test`` prints masked
  values in clear.
* ``extra`` ``{"settings": "/path/to/settings.yaml"}``: the cardprep settings
  file (else ``$CARDPREP_SETTINGS``, else ``config/settings.yaml``).

Without the Connection (the demo on embedded defaults) the settings file
alone decides: the soft store opens with its demo passphrase file.  With
``required=True`` a missing Connection is an error (production DAGs).

One soft store per process (issue 7): opening the soft store derives its
HMK through scrypt (~0.12 s here).  ``airflow dags test`` runs every task of
a run one after another in one process, so :meth:`KeyStoreHook.session`
keeps the soft store it opened in *this process's memory* (never on disk,
never in XCom) and hands it to the next session with the same settings,
Connection secret and store file, after :meth:`refresh` (records and
working keys are read and unwrapped again, as on a fresh open).  The
store's working keys are dropped at the end of each session; only the
store (its HMK) stays.  A session that fails closes and forgets its store.
Under an executor each task is a process of its own and this changes
nothing.  PKCS#11 stores are opened and closed per session, as before.

Example (in a task)::

    with KeyStoreHook().session() as (settings, store):
        store.kcv(store.active("demo-tk"))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

if TYPE_CHECKING:
    from pipeline.keys import KeyStore
    from pipeline.keys.settings import Settings

__all__ = ["KeyStoreHook", "forget_open_stores"]

#: Soft stores this process opened, by :func:`_reuse_key` (process memory only).
_OPEN_STORES: dict[tuple[Any, ...], KeyStore] = {}


def forget_open_stores() -> None:
    """Close and forget every soft store kept open by :meth:`KeyStoreHook.session`.

    Example::

        forget_open_stores()   # the next session derives the HMK again
    """
    while _OPEN_STORES:
        _, store = _OPEN_STORES.popitem()
        store.close()


def _drop_working_keys(store: KeyStore) -> None:
    """Forget the store's cached records and unwrapped keys (soft store: ``refresh``)."""
    refresh = getattr(store, "refresh", None)
    if refresh is not None:
        refresh()


def _checkpoint(store: KeyStore) -> None:
    """Empty the soft store's write-ahead log into its file (``SoftKeyStore.checkpoint``).

    A kept store would otherwise leave ``keys.db-wal`` beside the path, and a
    store file replaced before the next session would have it replayed into it.
    """
    checkpoint = getattr(store, "checkpoint", None)
    if checkpoint is not None:
        checkpoint()


def _file_id(path: Path | None) -> tuple[int, int, int, int] | None:
    """Device, inode, size and mtime of ``path`` (None when absent): a replaced file differs."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _reuse_key(conn_id: str, settings: Settings, secret: Any) -> tuple[Any, ...] | None:
    """What a kept soft store must match to be handed out again; None: never keep it.

    The settings (all of them), the Connection, a digest of its secret (never
    the secret itself), and the identity of the store file (a re-created store
    is a new inode) and of the passphrase file.  Example::

        _reuse_key("cardprep_keystore", settings, None)   # (..., (dev, ino, ...), ...)
    """
    from pipeline.keys.settings import Backend  # noqa: PLC0415 (parse time)

    ks = settings.key_store
    if ks.backend is not Backend.SOFT:
        return None
    store_id = _file_id(ks.path)
    if store_id is None:
        return None
    digest = hashlib.sha256(str(secret).encode("utf-8")).hexdigest() if secret else None
    return (conn_id, repr(settings), store_id[:2], _file_id(ks.passphrase_file), digest)


class KeyStoreHook(BaseHook):
    """Adapter from the ``cardprep_keystore`` Connection to ``pipeline.keys.open_store``."""

    conn_name_attr = "cardprep_conn_id"
    default_conn_name = "cardprep_keystore"
    conn_type = "cardprep_keystore"
    hook_name = "cardprep key store"

    def __init__(
        self, cardprep_conn_id: str = default_conn_name, *, required: bool = False
    ) -> None:
        super().__init__()
        self.cardprep_conn_id = cardprep_conn_id
        self.required = required

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form: only the PIN / passphrase (password) and the extra JSON matter."""
        return {
            "hidden_fields": ["host", "schema", "login", "port"],
            "relabeling": {"password": "Key store PIN / passphrase"},
            "placeholders": {"extra": '{"settings": "/etc/cardprep/settings.yaml"}'},
        }

    def _connection(self) -> Any | None:
        try:
            return self.get_connection(self.cardprep_conn_id)
        except AirflowNotFoundException:
            if self.required:
                raise
            return None

    @staticmethod
    def _settings_of(conn: Any | None) -> Settings:
        from pipeline.keys.settings import load_settings  # noqa: PLC0415 (parse time)

        extra = conn.extra_dejson if conn is not None else {}
        path = extra.get("settings")
        return load_settings(Path(path) if path else None)

    def settings(self) -> Settings:
        """The cardprep settings the Connection names (or the default settings file)."""
        return self._settings_of(self._connection())

    @contextmanager
    def session(self) -> Iterator[tuple[Settings, KeyStore]]:
        """``(settings, open store)`` for one task.

        A soft store stays open in this process for the next session (see the
        module docstring) with its working keys dropped; any other store, and
        any store whose session failed, is closed.
        """
        conn = self._connection()
        settings = self._settings_of(conn)
        key = _reuse_key(
            self.cardprep_conn_id if conn is not None else "", settings,
            conn.password if conn is not None else None,
        )  # fmt: skip
        store = _OPEN_STORES.pop(key, None) if key is not None else None
        reused = store is not None
        if store is not None:
            self._log_source("reusing the key store this process opened,", conn, settings)
        else:
            store = self._open(conn, settings)
        try:
            if reused:
                _drop_working_keys(store)
            yield settings, store
            if key is not None:
                _drop_working_keys(store)
                _checkpoint(store)  # no WAL left beside the path while it stays open
        except BaseException:
            store.close()
            raise
        if key is None:
            store.close()
            return
        for stale in [k for k in _OPEN_STORES if k[0] == key[0]]:  # one kept store per Connection
            _OPEN_STORES.pop(stale).close()
        _OPEN_STORES[key] = store

    def open_store(self) -> KeyStore:
        """Open the configured key store (the caller closes it)."""
        conn = self._connection()
        return self._open(conn, self._settings_of(conn))

    def _log_source(self, what: str, conn: Any | None, settings: Settings) -> None:
        """One log line: backend, Connection and *whether* it gave a secret (never the secret)."""
        self.log.info(
            "%s backend=%s from connection %s (secret from connection: %s)",
            what,
            settings.key_store.backend.value,
            self.cardprep_conn_id if conn is not None else "<none: settings file>",
            "yes" if conn is not None and conn.password else "no",
        )

    def _open(self, conn: Any | None, settings: Settings) -> KeyStore:
        """The secret, if any, comes from the Connection password and goes to open_store only."""
        from pipeline.keys import open_store  # noqa: PLC0415 (parse time)

        secret = conn.password if conn is not None else None
        self._log_source("opening key store", conn, settings)
        if not secret:
            return open_store(settings)
        from airflow.sdk.log import mask_secret  # noqa: PLC0415

        mask_secret(secret, self.cardprep_conn_id)
        return open_store(settings, secret=str(secret).encode("utf-8"))
