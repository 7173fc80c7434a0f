"""ncloud: the user's side of the platform (CLI, client, config); never imports Ray."""

__version__ = "0.1.0"
API_VERSION = 1
