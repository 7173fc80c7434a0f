"""`ncloud model deploy | predict | undeploy | token-revoke`: serving a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ncloud.cli import common
from ncloud.cli.common import OutputOpt
from ncloud.cli.models import app
from ncloud.errors import InvalidInput, NcloudError
from ncloud.render import Output, message, out, render

DEPLOY_COLUMNS = [
    "model", "status", "replicas", "gpus", "checkpoint", "max_batch", "batch_wait_ms",
    "max_queue", "url", "error",
]  # fmt: skip
DEPLOY_WAIT_S = 600.0


@app.command("deploy")
def deploy(
    model_id: int,
    replicas: Annotated[int, typer.Option("--replicas", help="Serve replicas.")] = 1,
    gpus: Annotated[int, typer.Option("--gpus", "-g", help="GPUs per replica.")] = 0,
    checkpoint: Annotated[int | None, typer.Option("--checkpoint", help="Epoch to serve.")] = None,
    max_batch: Annotated[
        int | None, typer.Option("--max-batch", help="Inputs per forward (default 32).")
    ] = None,
    batch_wait_ms: Annotated[
        float | None,
        typer.Option("--batch-wait-ms", help="How long a batch waits to fill (default 5)."),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option("--max-queue", help="Inputs waiting per replica before 503 (default 256)."),
    ] = None,
    volume: Annotated[
        list[str] | None,
        typer.Option(
            "--volume", "-v", help="ID[:PATH], repeatable: a volume the network reads (read-only)."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until Deployed.")] = True,
    output: OutputOpt = Output.table,
) -> None:
    """Serve a trained model over HTTP; prints its URL and a deployment token (shown once)."""
    models = common.client().models
    batching: dict[str, Any] = {
        "max_batch": max_batch,
        "batch_wait_ms": batch_wait_ms,
        "max_queue": max_queue,
        "volumes": [common.parse_mount(v) for v in volume or []] or None,
    }
    chosen = {k: v for k, v in batching.items() if v is not None}
    found = models.deploy(model_id, replicas, gpus, checkpoint, **chosen)
    token = found.pop("token")
    if wait and found["status"] == "Deploying":
        found = common.follow(
            lambda: models.deployment(model_id),
            lambda found: found["status"] != "Deploying",
            lambda found: f"model {model_id}: {found['status']}",
            DEPLOY_WAIT_S,
            f"model {model_id}'s deployment",
            f"ncloud model deployment {model_id}",
            give_up=False,  # the token is printed only below, and only once: never lose it
        )
    render(
        {**found, "token": token},
        None if output == Output.json else [*DEPLOY_COLUMNS, "token"],
        output,
    )
    if found["status"] == "Failed":
        raise NcloudError(f"model {model_id} failed to deploy: {found['error']}")
    message(
        f'next: ncloud model predict {model_id} image.png; curl -H "Authorization: Bearer '
        f'<token>" -F file=@image.png "{found["url"]}?k=5"'
    )


@app.command("undeploy")
def undeploy(model_id: int, output: OutputOpt = Output.table) -> None:
    """Stop serving a model; its bundles are free again."""
    render(common.client().models.undeploy(model_id), DEPLOY_COLUMNS, output)


@app.command("token-revoke")
def token_revoke(model_id: int, output: OutputOpt = Output.table) -> None:
    """Revoke the deployment's own token (tenant tokens keep working)."""
    render(common.client().models.revoke_deployment_token(model_id), None, output)


@app.command("predict")
def predict(
    model_id: int,
    files: Annotated[list[Path], typer.Argument(help="Inputs: images, texts, WAVs or JSON.")],
    k: Annotated[int, typer.Option("-k", help="How many classes per input.")] = 5,
    raw: Annotated[bool, typer.Option("--raw", help="The output vector instead.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Top-k predictions (index, label, probability) for each input, a table per input."""
    payload = []
    for path in files:
        if not path.is_file():
            raise InvalidInput(f"{path} is not a file")
        payload.append((path.name, path.read_bytes()))
    found = common.client().models.predict(model_id, payload, k, raw)
    if output == Output.json or raw:
        render(found, None, Output.json if raw else output)
        return
    for item in found["predictions"]:
        out.print(f"[bold]{item['input']}[/bold]")
        render([_row(rank, p) for rank, p in enumerate(item["top"], 1)], None, output)


def _row(rank: int, p: dict[str, Any]) -> dict[str, Any]:
    return {
        "rank": rank,
        "index": p["index"],
        "label": p["label"],
        "probability": f"{p['probability']:.4f}",
    }
