"""Quality metrics: the digits classifier and digits-FID."""
