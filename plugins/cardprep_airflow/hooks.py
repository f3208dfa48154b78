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

Example (in a task)::

    with KeyStoreHook().session() as (settings, store):
        store.kcv(store.active("demo-tk"))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

if TYPE_CHECKING:
    from pipeline.keys import KeyStore
    from pipeline.keys.settings import Settings

__all__ = ["KeyStoreHook"]


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
        """``(settings, open store)`` for one task; the store is closed afterwards."""
        conn = self._connection()
        settings = self._settings_of(conn)
        store = self._open(conn, settings)
        try:
            yield settings, store
        finally:
            store.close()

    def open_store(self) -> KeyStore:
        """Open the configured key store (the caller closes it)."""
        conn = self._connection()
        return self._open(conn, self._settings_of(conn))

    def _open(self, conn: Any | None, settings: Settings) -> KeyStore:
        """The secret, if any, comes from the Connection password and goes to open_store only."""
        from pipeline.keys import open_store  # noqa: PLC0415 (parse time)

        secret = conn.password if conn is not None else None
        self.log.info(
            "opening key store backend=%s from connection %s (secret from connection: %s)",
            settings.key_store.backend.value,
            self.cardprep_conn_id if conn is not None else "<none: settings file>",
            "yes" if secret else "no",
        )
        if not secret:
            return open_store(settings)
        from airflow.sdk.log import mask_secret  # noqa: PLC0415

        mask_secret(secret, self.cardprep_conn_id)
        return open_store(settings, secret=str(secret).encode("utf-8"))
