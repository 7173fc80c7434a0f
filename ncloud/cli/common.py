"""What every command shares: the client from flags/env/rc, the output option, confirmations,
and following a long operation under a spinner."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ncloud import config
from ncloud.errors import NcloudError, UsageError
from ncloud.render import Output, err
from ncloud.validation import parse_mount as parse_mount

if TYPE_CHECKING:
    from ncloud.client import Client

OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


class GlobalOptions:
    host: str | None = None
    token: str | None = None
    tenant: str | None = None


OPTIONS = GlobalOptions()


def client() -> Client:
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


def follow(
    fetch: Callable[[], Any],
    done: Callable[[Any], bool],
    describe: Callable[[Any], str],
    timeout_s: float,
    what: str,
    hint: str,
    give_up: bool = True,
) -> Any:
    """Fetch every second under a spinner (its text from `describe`) until `done`.

    Past `timeout_s` it stops with one line naming `what` and the command (`hint`) to look
    later, or with give_up=False returns what it fetched last.
    """
    deadline = time.monotonic() + timeout_s
    with err.status(f"{what}...") as spinner:
        while True:
            found = fetch()
            if text := describe(found):
                spinner.update(text)
            if done(found):
                return found
            if time.monotonic() > deadline:
                if not give_up:
                    return found
                raise NcloudError(
                    f"{what} still {found['status']} after {timeout_s:g}s; see `{hint}`"
                )
            time.sleep(1.0)
