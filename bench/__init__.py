"""Benchmarks that run ncloud and its peers side by side and print ratios."""
