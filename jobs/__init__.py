"""Data and training: manifests, dataset ingest, loaders, volumes, model specs, runs."""
