"""pipeline.io."""
