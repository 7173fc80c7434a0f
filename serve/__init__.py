"""HTTP: the REST API on Ray Serve, model deployments, predictions."""
