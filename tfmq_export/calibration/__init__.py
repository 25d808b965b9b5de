"""Calibration algorithms (minmax, qdiff, tfmq) and calibration data collection."""
