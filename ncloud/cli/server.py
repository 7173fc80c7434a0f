"""`ncloud server start|stop|status|admin-token`: the embedded local cluster and its
control plane."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ncloud.cli.common import OutputOpt
from ncloud.protocol import host_of
from ncloud.render import Output, message, render

app = typer.Typer(help="Start, stop and inspect the local ncloud server.", no_args_is_help=True)

STATUS_COLUMNS = ["running", "api_url", "ray_address", "dashboard_url", "pid", "uptime_s", "home"]


@app.command("start")
def start(
    cpus: Annotated[
        int | None, typer.Option(help="CPUs for the local Ray head (all by default).")
    ] = None,
    gpus: Annotated[
        int | None, typer.Option(help="GPUs for the local Ray head (detected by default).")
    ] = None,
    port: Annotated[
        int, typer.Option("--port", help="Port of the REST API and predictions.")
    ] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address the API binds to.")] = "127.0.0.1",
    ray_port: Annotated[int, typer.Option(help="Ray GCS port.")] = 6380,
    dashboard_port: Annotated[int, typer.Option(help="Ray dashboard port (loopback only).")] = 8265,
    address: Annotated[
        str | None, typer.Option(help="Attach to this Ray cluster instead of starting one.")
    ] = None,
    single_tenant: Annotated[
        bool,
        typer.Option(
            "--single-tenant",
            help="Run tenant code without a sandbox: only for a machine one person uses.",
        ),
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Start a local Ray head (on loopback) and the ncloud control plane on it."""
    from cluster.control import local
    from ncloud.settings import settings

    if single_tenant:  # the head, the controller and every replica inherit it
        os.environ["NCLOUD_SINGLE_TENANT"] = "1"
        settings.cache_clear()
        message("[yellow]single-tenant: tenant code runs WITHOUT a sandbox[/yellow]")

    message("starting ncloud (Ray head, controller, API)...")
    state = local.start(
        cpus=cpus,
        gpus=gpus,
        api_port=port,
        ray_port=ray_port,
        dashboard_port=dashboard_port,
        address=address,
        api_host=host,
    )
    token = state.pop("admin_token")
    if output == Output.json:
        render({**state, "admin_token": token}, None, output)
        return
    render(state, ["api_url", "ray_address", "dashboard_url", "pid", "home", "log"], output)
    if token:
        message("[bold]first start: the admin token, shown once:[/bold]")
        typer.echo(token)
    message(
        f"next: ncloud configure --host {host_of(state['api_url'])} "
        "--token <token>; ncloud tenant add NAME --cpus 1"
    )


@app.command("admin-token")
def admin_token(
    reset: Annotated[
        bool, typer.Option("--reset", help="Mint a new token for the first admin.")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """A new admin token, read from the store on this machine (the server need not run)."""
    from cluster.control import local
    from ncloud.errors import UsageError

    if not reset:
        raise UsageError(
            "tokens are stored hashed and cannot be shown again: --reset mints a new one"
        )
    found = local.reset_admin_token()
    if output == Output.json:
        render(found, None, output)
        return
    message(f"a new token for {found['email']}, shown once:")
    typer.echo(found["admin_token"])


@app.command("stop")
def stop(
    hard: Annotated[
        bool,
        typer.Option(
            "--hard", help="Do not checkpoint running runs first (they resume from their last)."
        ),
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Stop what `start` started; every record stays for the next start. Running runs are
    checkpointed and Suspended first, and resume at the next start (no restart spent)."""
    from cluster.control import local

    render(local.stop(hard=hard), None, output)


@app.command("status")
def status(output: OutputOpt = Output.table) -> None:
    """Whether the server runs, where, and since when."""
    from cluster.control import local

    state = local.status()
    render(
        state, None if output == Output.json else [c for c in STATUS_COLUMNS if c in state], output
    )
    if not state["running"]:
        raise typer.Exit(1)
