"""Shipped calibration recipes (package data): one JSON preset per model and bit setting.

``tfmq_export.config.load_recipe`` reads them by name (``digits-tfmq-w4a8``) or any JSON file by
path. Keys: the ``CalibrationSettings`` fields, plus ``model`` and ``notes`` (what the preset is
for and why each value; not settings).
"""
