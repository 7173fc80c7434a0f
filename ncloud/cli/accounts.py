"""`ncloud tenant ...` and `ncloud user ...`: admin commands for teams and people."""

from __future__ import annotations

from typing import Annotated

import typer

from ncloud.cli import common
from ncloud.cli.common import OutputOpt, YesOpt, confirm
from ncloud.render import Output, message, render

tenant_app = typer.Typer(help="Teams and their reserved resources (admin).", no_args_is_help=True)
user_app = typer.Typer(help="Users and their tenants (admin).", no_args_is_help=True)

TENANT_COLUMNS = ["name", "cpus", "gpus", "memory", "placement_group", "created_at"]
USER_COLUMNS = ["email", "admin", "tenants", "created_at"]

Cpus = Annotated[float | None, typer.Option("--cpus", help="CPUs to reserve.")]
Gpus = Annotated[float | None, typer.Option("--gpus", help="GPUs to reserve.")]
Memory = Annotated[str | None, typer.Option("--memory", help="Memory to reserve, e.g. 4GiB.")]


@tenant_app.command("add")
def tenant_add(
    name: str,
    cpus: Cpus = None,
    gpus: Gpus = None,
    memory: Memory = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a tenant and its reservation (a Ray placement group)."""
    if cpus is None:
        from ncloud.errors import UsageError

        raise UsageError("--cpus is required: how many CPUs the tenant reserves")
    render(common.client().tenants.add(name, cpus, gpus or 0, memory or 0), None, output)


@tenant_app.command("ls")
def tenant_ls(output: OutputOpt = Output.table) -> None:
    """List tenants."""
    render(common.client().tenants.list(), TENANT_COLUMNS, output)


@tenant_app.command("show")
def tenant_show(name: str, output: OutputOpt = Output.table) -> None:
    """A tenant, its users and its reservation."""
    render(common.client().tenants.show(name), None, output)


@tenant_app.command("modify")
def tenant_modify(
    name: str,
    cpus: Cpus = None,
    gpus: Gpus = None,
    memory: Memory = None,
    output: OutputOpt = Output.table,
) -> None:
    """Resize a tenant's reservation."""
    render(common.client().tenants.modify(name, cpus, gpus, memory), None, output)


@tenant_app.command("rm")
def tenant_rm(
    name: str,
    force: Annotated[bool, typer.Option("--force", help="Also remove everything it owns.")] = False,
    yes: YesOpt = False,
    output: OutputOpt = Output.table,
) -> None:
    """Remove a tenant and free its reservation."""
    confirm(f"Remove tenant {name!r} and free its reservation?", yes)
    render(common.client().tenants.remove(name, force), None, output)


@user_app.command("add")
def user_add(
    email: str,
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", "-t", help="Tenant (repeatable).")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Create a user; prints their token once."""
    created = common.client().users.add(email, tenant or [], admin)
    if output == Output.json:
        render(created, None, output)
        return
    render(created, USER_COLUMNS, output)
    message(f"[bold]token for {created['email']}, shown once:[/bold]")
    typer.echo(created["token"])


@user_app.command("ls")
def user_ls(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only this tenant's users.")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """List users."""
    render(common.client().users.list(tenant), USER_COLUMNS, output)


@user_app.command("show")
def user_show(email: str, output: OutputOpt = Output.table) -> None:
    """A user and their tenants."""
    render(common.client().users.show(email), USER_COLUMNS, output)


@user_app.command("modify")
def user_modify(
    email: str,
    add_tenant: Annotated[
        list[str] | None, typer.Option("--add-tenant", help="Join a tenant.")
    ] = None,
    remove_tenant: Annotated[
        list[str] | None, typer.Option("--remove-tenant", help="Leave a tenant.")
    ] = None,
    admin: Annotated[
        bool | None, typer.Option("--admin/--no-admin", help="Grant or drop admin.")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change a user's tenants or admin flag."""
    render(
        common.client().users.modify(email, add_tenant, remove_tenant, admin), USER_COLUMNS, output
    )


@user_app.command("rm")
def user_rm(email: str, yes: YesOpt = False, output: OutputOpt = Output.table) -> None:
    """Remove a user and revoke all their tokens."""
    confirm(f"Remove user {email!r} and revoke their tokens?", yes)
    render(common.client().users.remove(email), USER_COLUMNS, output)


audit_app = typer.Typer(help="Admin: the audit log of state-changing calls.", no_args_is_help=True)
AUDIT_COLUMNS = ["id", "at", "user", "tenant", "action", "object", "status", "outcome"]


@audit_app.command("ls")
def audit_ls(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's.")] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only calls in this tenant.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="From this ISO date or time (UTC).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest.")] = 1000,
    output: OutputOpt = Output.table,
) -> None:
    """Who created, changed or deleted what, and how it ended (admins only)."""
    render(common.client().audit.list(user, tenant, since, limit), AUDIT_COLUMNS, output)
