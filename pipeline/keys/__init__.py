"""pipeline.keys."""
