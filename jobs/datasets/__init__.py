"""Datasets: their records, decoding and ingest into shards, the node cache, linked
datasets, the loader, transforms."""
