"""pipeline.steps."""
