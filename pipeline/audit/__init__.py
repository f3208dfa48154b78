"""pipeline.audit."""
