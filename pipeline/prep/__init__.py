"""Per-card data preparation: record + product profile + key store -> PreparedCard | Reject.

Example:
    >>> from pipeline.prep import CardPreparer, PreparerKeys          # doctest: +SKIP
    >>> keys = PreparerKeys.resolve(store, profile, kek="demo-kek",   # doctest: +SKIP
    ...                             pan_token="demo-pan-token")
    >>> CardPreparer(profile, store, keys).prepare(record)            # doctest: +SKIP
"""

from pipeline.prep.card import CardPreparer, IssuerPki, PreparedCard, PreparerKeys

__all__ = ["CardPreparer", "IssuerPki", "PreparedCard", "PreparerKeys"]
