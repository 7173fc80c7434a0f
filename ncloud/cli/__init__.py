"""The `ncloud` command line (Typer): one sub-app per noun, one error boundary in main."""
