"""Small shared infrastructure: batching, library versions (and, next to them, nothing model-specific)."""
