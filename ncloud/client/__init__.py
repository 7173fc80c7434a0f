"""A typed HTTP client for the ncloud REST API; the CLI uses it and so can users.

    from ncloud.client import Client
    c = Client("http://127.0.0.1:8000", token="nc_...", tenant="vision")
    c.tenants.list()

Every failure raises a class from ncloud.errors, the same one the server raised.
"""

from __future__ import annotations

import httpx

from ncloud.client.accounts import Audit, ResourcesAPI, Tenants, Tokens, Users
from ncloud.client.batches import Batches
from ncloud.client.datasets import Datasets
from ncloud.client.models import Models
from ncloud.client.transport import JSON, Transport
from ncloud.client.volumes import Volumes

__all__ = ["JSON", "Client", "Transport"]


class Client(Transport):
    """The transport plus one attribute per resource: client.models.train(...), and so on."""

    def __init__(
        self,
        host: str,
        token: str | None = None,
        tenant: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(host, token, tenant, timeout, transport)
        self.tenants = Tenants(self)
        self.users = Users(self)
        self.tokens = Tokens(self)
        self.resources = ResourcesAPI(self)
        self.audit = Audit(self)
        self.datasets = Datasets(self)
        self.volumes = Volumes(self)
        self.models = Models(self)
        self.batches = Batches(self)
