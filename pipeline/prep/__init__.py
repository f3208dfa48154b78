"""pipeline.prep."""
