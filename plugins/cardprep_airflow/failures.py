"""Which cardprep errors are worth a retry, and which fail the task at once.

Retries with exponential backoff help with what can pass: a busy batch lock
(another run is preparing the same file), a key store or HSM that is briefly
unreachable, a full disk being cleaned.  They only delay what cannot pass: a
file whose trailer count is wrong, a batch that is already published, a
reconciliation failure, a key used against its usage.  Those fail at once
(``AirflowFailException``: no retry), with the error's own message, which
names the field and non-secret values only (pipeline/errors.py); the
traceback chain is dropped so nothing but that message reaches the log.

Example::

    with fail_fast_on_permanent_errors():
        verify_and_parse(issuer, path, settings)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException

__all__ = ["fail_fast_on_permanent_errors", "file_refusal_types", "permanent_error_types"]


def permanent_error_types() -> tuple[type[Exception], ...]:
    """cardprep errors a retry cannot cure."""
    from pipeline import errors  # noqa: PLC0415 (parse time)

    return (
        errors.InputFileError,
        errors.ConfigError,
        errors.ReconciliationError,
        errors.VerificationError,
        errors.PublishError,
        errors.CryptoError,
        errors.KeyUsageError,
        errors.KeyStateError,
        errors.KeyNotFoundError,
        errors.CapabilityError,
        errors.PreparationError,
    )


def file_refusal_types() -> tuple[type[Exception], ...]:
    """Errors that are one input file's own fault (a retry or another file cannot change them).

    Its header, trailer, counts or hash total are wrong, it repeats a delivery
    another batch holds, its batch is already published.  In a sweep of
    every new file, such a file is refused and the others go on (card_batch).
    A busy batch lock (:class:`~pipeline.errors.BatchLockedError`) is not one.
    """
    from pipeline import errors  # noqa: PLC0415 (parse time)

    return (errors.InputFileError, errors.ReconciliationError, errors.PublishError)


@contextmanager
def fail_fast_on_permanent_errors() -> Iterator[None]:
    """Turn a permanent cardprep error into ``AirflowFailException`` (no retry)."""
    from pipeline.errors import BatchLockedError  # noqa: PLC0415

    try:
        yield
    except BatchLockedError:
        raise  # another run holds the batch: retry later
    except permanent_error_types() as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None
