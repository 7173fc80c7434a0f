"""The sandbox that every piece of tenant code runs in (see jobs/sandbox/launch.py)."""
