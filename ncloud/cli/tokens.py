"""`ncloud token ...` (your own tokens), `ncloud resource ls` (your tenant's reservation) and
`ncloud usage` (the hours it held)."""

from __future__ import annotations

from typing import Annotated

import typer

from ncloud.cli import common
from ncloud.cli.common import OutputOpt
from ncloud.render import Output, message, render
from ncloud.validation import format_size

token_app = typer.Typer(help="Your access tokens.", no_args_is_help=True)
resource_app = typer.Typer(help="Your tenant's reserved resources.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", "-n", help="A label for the token.")] = "cli",
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="Admin: a token for this user (who lost theirs)."),
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a token; it is shown once."""
    created = common.client().tokens.create(name, user)
    if output == Output.json:
        render(created, None, output)
        return
    message(
        f"[bold]token {created['id']} ({created['name']}) of {created['user']}, shown once:[/bold]"
    )
    typer.echo(created["token"])


@token_app.command("ls")
def token_ls(output: OutputOpt = Output.table) -> None:
    """List your tokens (never their secrets)."""
    render(
        common.client().tokens.list(),
        ["id", "name", "created_at", "last_used_at", "revoked"],
        output,
    )


@token_app.command("revoke")
def token_revoke(token_id: str, output: OutputOpt = Output.table) -> None:
    """Revoke one of your tokens at once."""
    render(common.client().tokens.revoke(token_id), None, output)


@resource_app.command("ls")
def resource_ls(output: OutputOpt = Output.table) -> None:
    """The tenant's reservation and what is in use now."""
    found = common.client().resources.list()
    if output == Output.json:
        render(found, None, output)
        return

    def shown(kind: str, value: float) -> str | float:
        return format_size(value) if kind == "memory" else value

    rows = [
        {
            "resource": kind,
            "reserved": shown(kind, found["reserved"][kind]),
            "in_use": shown(kind, found["in_use"][kind]),
            "free": shown(kind, found["reserved"][kind] - found["in_use"][kind]),
        }
        for kind in ("cpus", "gpus", "memory")
    ]
    render(rows, ["resource", "reserved", "in_use", "free"], output)
    message(
        f"tenant {found['tenant']}: placement group {found['placement_group']} "
        f"({found['state']}), {len(found['bundles'])} bundles"
    )


USAGE_COLUMNS = [
    "kind", "model", "name", "cpus", "gpus", "memory", "hours", "cpu_h", "gpu_h", "gib_h",
    "running",
]  # fmt: skip


def usage(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Whose (admins: any; all if none).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="From this ISO date or time (UTC).")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """CPU-, GPU- and memory-hours held, per run and deployment; running ones count to now."""
    found = common.client().resources.usage(tenant, since)
    if output == Output.json:
        render(found, None, output)
        return
    rows = [
        {
            **item,
            "memory": format_size(item["memory"]),
            "hours": round(item["held_s"] / 3600, 4),
            "cpu_h": round(item["cpu_hours"], 4),
            "gpu_h": round(item["gpu_hours"], 4),
            "gib_h": round(item["memory_gib_hours"], 4),
        }
        for item in found["items"]
    ]
    columns = USAGE_COLUMNS
    if not any(item["gpus"] for item in found["items"]):  # no GPU columns on a CPU cluster
        columns = [c for c in columns if c not in ("gpus", "gpu_h")]
    if len(found["tenants"]) > 1:
        columns = ["tenant", *columns]
    render(rows, columns, output)
    for t in found["tenants"]:
        message(
            f"tenant {t['tenant']}: {t['cpu_hours']:.4f} CPU-hours, {t['gpu_hours']:.4f} "
            f"GPU-hours, {t['memory_gib_hours']:.4f} GiB-hours "
            f"(from {found['since'] or 'the start'} to {found['until'][:19]})"
        )
