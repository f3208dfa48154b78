"""Thin Airflow adapters for cardprep (hooks, sensors).

Everything here adapts Airflow objects (Connections, task context) to the
plain values :mod:`pipeline` takes; the logic lives in ``pipeline.steps``.
This folder is on ``sys.path`` when Airflow runs (``plugins_folder``), so
DAG files import ``cardprep_airflow.hooks``.  Nothing here may be named
``pipeline*`` (DESIGN.md "Layout").
"""
