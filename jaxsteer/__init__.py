"""jaxsteer."""
