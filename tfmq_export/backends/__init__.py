"""Backends: one folder each (build + run), behind one Runner interface and one registry (``base``)."""
