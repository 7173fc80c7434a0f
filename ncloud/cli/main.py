"""The `ncloud` entry point: global options, sub-apps, and the one error boundary."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from ncloud.cli import accounts, batches, common, datasets, models, server, tokens, volumes
from ncloud.cli import deploy as _deploy  # noqa: F401  (adds deploy, predict, undeploy to `model`)
from ncloud.cli.common import OPTIONS, OutputOpt
from ncloud.errors import NcloudError
from ncloud.protocol import host_of
from ncloud.render import Output, err, message, render

app = typer.Typer(
    name="ncloud",
    help="ncloud: datasets, training and deployments on a shared Ray cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(server.app, name="server")
app.add_typer(accounts.tenant_app, name="tenant")
app.add_typer(accounts.user_app, name="user")
app.add_typer(accounts.audit_app, name="audit")
app.add_typer(tokens.token_app, name="token")
app.add_typer(tokens.resource_app, name="resource")
app.add_typer(datasets.app, name="dataset")
app.add_typer(volumes.app, name="volume")
app.add_typer(models.app, name="model")
app.add_typer(batches.app, name="batch")
app.command("usage")(tokens.usage)


@app.callback()
def main_options(
    host: Annotated[str | None, typer.Option("--host", help="API URL (NCLOUD_HOST).")] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="Access token (NCLOUD_TOKEN).")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Tenant to act in (NCLOUD_TENANT).")
    ] = None,
) -> None:
    OPTIONS.host, OPTIONS.token, OPTIONS.tenant = host, token, tenant


@app.command("configure")
def configure(
    host: Annotated[
        str | None, typer.Option("--host", help="API URL, e.g. http://127.0.0.1:8000")
    ] = None,
    token: Annotated[str | None, typer.Option("--token", help="Your access token.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant to act in.")] = None,
) -> None:
    """Write ~/.ncloudrc (mode 0600) with host, token and tenant."""
    from ncloud import config
    from ncloud.client import Client

    interactive = sys.stdin.isatty()
    host = (
        host
        or OPTIONS.host
        or (
            typer.prompt("ncloud host", default=config.DEFAULT_HOST)
            if interactive
            else config.DEFAULT_HOST
        )
    )
    token = (
        token or OPTIONS.token or (typer.prompt("token", hide_input=True) if interactive else None)
    )
    if not token:
        raise typer.BadParameter("--token is required when not running interactively")
    tenant = (
        tenant
        or OPTIONS.tenant
        or (typer.prompt("tenant", default="", show_default=False) if interactive else None)
        or None
    )
    path = config.write_rc(host_of(config.api_url(host)), token, tenant)
    message(f"wrote {path}")
    try:
        me = Client(host, token=token, tenant=tenant).info()
        message(
            f"signed in as {me['user']['email']}"
            + (f" in tenant {me['tenant']}" if me.get("tenant") else "")
        )
    except NcloudError as exc:
        message(f"[yellow]warning:[/yellow] saved, but the server said: {exc.message}")


@app.command("info")
def info(output: OutputOpt = Output.table) -> None:
    """Who you are, which tenant you act in, and the cluster's resources."""
    found = common.client().info()
    if output == Output.json:
        render(found, None, output)
        return
    user = found["user"]
    render(
        {
            "user": user["email"],
            "admin": user["admin"],
            "tenants": user["tenants"],
            "tenant": found["tenant"],
            "server_version": found["version"],
            "cluster_total": found["cluster"]["total"],
            "cluster_unreserved": found["cluster"]["unreserved"],
        },
        None,
        output,
    )


def main() -> None:
    """Run the CLI; domain errors become one red line on stderr and exit code 1 (2 for usage)."""
    try:
        app()
    except NcloudError as exc:
        if os.environ.get("NCLOUD_DEBUG") == "1":
            traceback.print_exc()
        err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]")
        sys.exit(130)
    except Exception as exc:  # the one boundary: a bug must still not spill a traceback
        if os.environ.get("NCLOUD_DEBUG") == "1":
            raise
        err.print(
            f"[red]error:[/red] unexpected {type(exc).__name__}: {exc} "
            "(NCLOUD_DEBUG=1 shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
