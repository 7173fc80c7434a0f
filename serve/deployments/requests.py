"""What a deployed model's replica does with a request before the network sees it.

Who may ask (a tenant token or the deployment's own; serve.throttle caches the answer and
throttles failures), which inputs it sent, its query parameters, and its path under the
deployment's route.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from cluster.core import tokens
from jobs.models import deployments
from jobs.models.predictor import DEFAULT_K
from ncloud.errors import InvalidInput, NotFound, PayloadTooLarge, Unauthenticated

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def authorize(store: Any, tenant: str | None, model_id: int | str, request: Request) -> str:
    """The model's tenant, when the caller is one of its users (or an admin) or holds this
    deployment's token; else 401/404.

    `tenant` None means there is no such model: a user's token gets a 404, any other a 401.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not header or scheme.lower() != "bearer" or not token:
        raise Unauthenticated("send 'Authorization: Bearer <token>' (a tenant or deployment token)")
    if token.startswith("ncd_"):
        if tenant is None:  # no deployment token is valid for a model that does not exist
            raise Unauthenticated("invalid or revoked deployment token")
        deployments.check_token(store, int(model_id), token)
        return tenant
    user = tokens.authenticate(store, token)
    if tenant is None or (tenant not in user.tenants and not user.is_admin):
        raise NotFound(f"no model {model_id}")
    return tenant


# Form fields that are not files (ignored, but parsed): a few, each small.
MAX_FIELDS, MAX_FIELD_BYTES = 16, 64 << 10


async def read_inputs(request: Request, max_inputs: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of every input: multipart files, or one raw body (a file or JSON).

    A multipart body is held to `max_inputs` files and MAX_FIELDS small fields as it is
    parsed (413), and one that does not parse is a 422, never a 500.
    """
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        try:
            form = await request.form(
                max_files=max_inputs, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES
            )
        except (MultiPartException, HTTPException) as exc:
            message = str(getattr(exc, "message", None) or getattr(exc, "detail", exc))
            if message.startswith("Too many files"):
                raise PayloadTooLarge(
                    f"over {max_inputs} files in one request; this deployment takes at most "
                    f"{max_inputs} (its --max-queue)"
                ) from None
            if message.startswith(("Too many fields", "Field exceeded", "Part exceeded")):
                raise PayloadTooLarge(
                    f"form fields are limited to {MAX_FIELDS} of {MAX_FIELD_BYTES >> 10} KiB "
                    f"each: {message}"
                ) from None
            raise InvalidInput(f"the multipart body does not parse: {message}") from None
        found = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                found.append((value.filename or key, await value.read()))
        if not found:
            raise InvalidInput("no files in the request: send -F file=@input.jpg")
        return found
    body = await request.body()
    if not body:
        raise InvalidInput("the request is empty: send -F file=@input.jpg")
    name = "input.json" if "json" in kind else request.query_params.get("name", "input")
    return [(name, body)]


def query(request: Request) -> tuple[int, bool]:
    """`k` and `raw` from the query string; a 422 naming the bad one."""
    params = request.query_params
    try:
        k = int(params.get("k", DEFAULT_K))
    except ValueError:
        raise InvalidInput(f"k must be an integer, not {params.get('k')!r}") from None
    raw = params.get("raw", "false").lower()
    if raw not in _TRUE | _FALSE:
        raise InvalidInput(f"raw must be true or false, not {params.get('raw')!r}")
    return k, raw in _TRUE


def relative_path(request: Request) -> str:
    """The path under the deployment's route (/models/<id>): "/" or "/predict"."""
    path, root = request.scope.get("path", "/"), request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return "/" + path.strip("/")
