"""cardprep: batch data preparation for EMV and PBOC payment cards.

The domain package. It never imports Airflow (an import-linter contract in
``pyproject.toml`` enforces this); ``dags/`` and ``plugins/`` are thin adapters
over :mod:`pipeline.steps`.
"""

__version__ = "0.1.0"
