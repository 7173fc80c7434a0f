"""Deployed models on Ray Serve: placing them (manager), the replica, what it does with
a request."""
