"""Recipe schema, loading and validation."""
