"""What every command shares: the client from flags/env/rc, the output option, confirmations."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ncloud import config
from ncloud.errors import UsageError
from ncloud.render import Output

OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


class GlobalOptions:
    host: str | None = None
    token: str | None = None
    tenant: str | None = None


OPTIONS = GlobalOptions()


def client():  # type: ignore[no-untyped-def]
    """A client configured from --host/--token/--tenant, NCLOUD_* and ~/.ncloudrc."""
    from ncloud.client import Client  # httpx is only imported by commands that talk HTTP

    cfg = config.load(OPTIONS.host, OPTIONS.token, OPTIONS.tenant)
    return Client(cfg.host, token=cfg.token, tenant=cfg.tenant)


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} Pass --yes to confirm when not running interactively.")
    if not typer.confirm(question, default=False, err=True):
        raise typer.Exit(1)
