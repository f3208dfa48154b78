"""pipeline.records."""
