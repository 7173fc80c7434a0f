"""Example networks, the bundled dataset recipe and the end-to-end demo."""
