"""Volumes: their records and files, and a run's local copy pulled in and pushed back."""
