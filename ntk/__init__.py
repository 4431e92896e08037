"""ntk (placeholder; see README)."""
