"""The web dashboard under /ui: server-rendered pages over the REST API's own route functions."""
