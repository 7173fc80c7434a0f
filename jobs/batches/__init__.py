"""Batch predictions: their records, the driver thread, Ray tasks over slices, result files."""
