"""The REST API's routers, one module per resource; each is thin over jobs/ and the controller."""
