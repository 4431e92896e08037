"""recoder (placeholder; see README)."""
