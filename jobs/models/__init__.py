"""Models: their records and runs, metrics, specs and layers, checkpoints, deployment
records, the predictor."""
