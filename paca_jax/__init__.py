"""paca_jax (placeholder; see README)."""
