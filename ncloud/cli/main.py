"""The `ncloud` entry point: global options, sub-apps, and the one error boundary."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ncloud.cli import accounts, batches, common, datasets, models, server, tokens, volumes
from ncloud.cli import deploy as _deploy  # noqa: F401  (adds deploy, predict, undeploy to `model`)
from ncloud.cli.common import OPTIONS, OutputOpt
from ncloud.errors import NcloudError
from ncloud.protocol import host_of
from ncloud.render import Output, err, message, out, render


class ModelByDefault(TyperGroup):
    """`ncloud train spec.yaml` is `ncloud model train spec.yaml`, as in Nervana's ncloud:
    a name that is no top-level command is looked up among the model commands."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name.startswith("-"):
            return found
        group = super().get_command(ctx, "model")
        return group.get_command(ctx, cmd_name) if isinstance(group, TyperGroup) else None


app = typer.Typer(
    name="ncloud",
    cls=ModelByDefault,
    help="ncloud: datasets, training and deployments on a shared Ray cluster. "
    "A model command may drop its group: `ncloud train spec.yaml` is `ncloud model train`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Each group under its name, then Nervana's short names for it (hidden from --help).
GROUPS: list[tuple[typer.Typer, str, tuple[str, ...]]] = [
    (server.app, "server", ()),
    (accounts.tenant_app, "tenant", ()),
    (accounts.user_app, "user", ()),
    (accounts.audit_app, "audit", ()),
    (tokens.token_app, "token", ()),
    (tokens.resource_app, "resource", ("r",)),
    (datasets.app, "dataset", ("ds", "d")),
    (volumes.app, "volume", ("v", "vs")),
    (models.app, "model", ("m",)),
    (batches.app, "batch", ("b",)),
]
for group, name, aliases in GROUPS:
    app.add_typer(group, name=name)
    for alias in aliases:
        app.add_typer(group, name=alias, hidden=True)
app.command("usage")(tokens.usage)


def _version(ctx: typer.Context, show: bool) -> None:
    """Print the client's version and the server's, warning when they differ."""
    if not show:
        return
    import ncloud
    from ncloud import config

    out.print(f"ncloud client {ncloud.__version__}", highlight=False)
    cfg = config.load(ctx.params.get("host"))
    try:
        from ncloud.client import Client

        with Client(cfg.host, timeout=5.0) as c:
            found = c.health()
    except NcloudError as exc:
        out.print(f"ncloud server: unknown ({exc.message})", highlight=False)
        raise typer.Exit(0) from None
    out.print(f"ncloud server {found['version']} at {host_of(cfg.host)}", highlight=False)
    if found["version"] != ncloud.__version__:
        message(
            f"[yellow]warning:[/yellow] the client is {ncloud.__version__} and the server "
            f"{found['version']}: install the server's version (pip install ncloud=="
            f"{found['version']})"
        )
    raise typer.Exit(0)


@app.callback()
def main_options(
    host: Annotated[str | None, typer.Option("--host", help="API URL (NCLOUD_HOST).")] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="Access token (NCLOUD_TOKEN).")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Tenant to act in (NCLOUD_TENANT).")
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="The client's and the server's versions.",
            callback=_version,
            is_eager=False,
        ),
    ] = False,
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
    """Write ~/.ncloudrc (mode 0600); only the fields given change.

    The others keep their saved values; in a terminal with no fields given, each is asked
    for with the saved value as its default."""
    from ncloud import config
    from ncloud.client import Client

    saved = config.read_rc()
    asked = config.Config(
        host=host or OPTIONS.host or "",
        token=token or OPTIONS.token,
        tenant=tenant or OPTIONS.tenant,
    )
    if asked.host:
        _check_host(asked.host)  # malformed: exit 2, nothing written
    interactive = sys.stdin.isatty() and not (asked.host or asked.token or asked.tenant)
    new_host = asked.host or saved.get("host") or ""
    new_token, new_tenant = asked.token or saved.get("token"), asked.tenant or saved.get("tenant")
    if interactive:
        new_host = typer.prompt("ncloud host", default=new_host or config.DEFAULT_HOST)
        _check_host(new_host)
        new_token = typer.prompt(
            "token" + (" (Enter keeps the saved one)" if new_token else ""),
            default=new_token or "",
            hide_input=True,
            show_default=False,
        )
        new_tenant = typer.prompt("tenant", default=new_tenant or "", show_default=bool(new_tenant))
    if not new_token:
        raise typer.BadParameter("--token is required: no token is saved yet")
    new_host = host_of(config.api_url(new_host or config.DEFAULT_HOST))
    path = config.write_rc(new_host, new_token, new_tenant or None)
    message(f"wrote {path} (host {new_host}" + (f", tenant {new_tenant})" if new_tenant else ")"))
    try:
        with Client(new_host, token=new_token, tenant=new_tenant or None) as c:
            me = c.info()
        message(
            f"signed in as {me['user']['email']}"
            + (f" in tenant {me['tenant']}" if me.get("tenant") else "")
        )
    except NcloudError as exc:
        message(f"[yellow]warning:[/yellow] saved, but the server said: {exc.message}")


def _check_host(host: str) -> None:
    from ncloud import config

    try:
        config.check_host(host)
    except NcloudError as exc:
        raise typer.BadParameter(exc.message) from None


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
