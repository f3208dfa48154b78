"""pipeline.profiles."""
