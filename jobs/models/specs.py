"""Model specs: parse and validate a network file (.yaml or .py), build it for torch, check it.

A YAML spec lists ``layers`` (see jobs/models/layers.py) plus optional ``epochs``,
``batch_size``, ``cost``, ``optimizer``, ``schedule``, ``transform`` and ``description``.
A Python spec defines ``model(num_classes, input_shape) -> nn.Module`` and optionally
``optimizer(params)``, ``loss()``, ``scheduler(optimizer)`` and the constants ``EPOCHS``,
``BATCH_SIZE`` and ``TRANSFORM``. Parsing never runs user code; building does, so the API
server checks every spec in a sandbox (jobs.sandbox.check).
"""

from __future__ import annotations

import ast
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import nn

from jobs.datasets.transforms import build_transform
from jobs.models import layers as sl
from ncloud.errors import InvalidInput, NcloudError

T = TypeVar("T")
PY_CONSTANTS = ("EPOCHS", "BATCH_SIZE", "TRANSFORM")


@dataclass(frozen=True)
class Spec:
    name: str  # the file name as uploaded, e.g. "cnn.yaml"
    text: str
    kind: str  # "yaml" | "py"
    epochs: int | None
    batch_size: int | None
    transform: dict[str, Any] | None  # a jobs.datasets.transforms spec, for training and prediction


@dataclass
class Built:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: nn.Module  # loss(outputs, targets)
    scheduler: Any | None  # stepped once per epoch
    ends_in_softmax: bool  # outputs are probabilities already


def parse_spec(name: str, text: str) -> Spec:
    """Validate a spec file without running any of it."""
    if name.endswith((".yaml", ".yml")):
        data, _ = _load_yaml(name, text)
        return Spec(
            name, text, "yaml", data.get("epochs"), data.get("batch_size"), data.get("transform")
        )
    if name.endswith(".py"):
        return _parse_py(name, text)
    raise InvalidInput(f"model spec {name!r} must be a .yaml, .yml or .py file")


def _load_yaml(name: str, text: str) -> tuple[dict[str, Any], list[int | None]]:
    """The validated document and the line of each layer entry."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark, context = exc.problem_mark or exc.context_mark, exc.context_mark
        where = f" line {mark.line + 1}" if mark else ""
        problem = str(exc.problem or exc.context)
        if exc.problem and exc.context and context and mark and context.line != mark.line:
            problem += f" ({exc.context} that starts on line {context.line + 1})"
        raise InvalidInput(f"{name}{where}: {problem}") from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{name}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise InvalidInput(f"{name} must be a YAML mapping with a 'layers' list")
    keys = {k.value: v for k, v in root.value if isinstance(k, yaml.ScalarNode)}

    def at(key: str) -> str:
        return f"{name} line {keys[key].start_mark.line + 1}" if key in keys else name

    unknown = sorted(set(map(str, data)) - sl.TOP_KEYS)
    if unknown:
        raise InvalidInput(
            f"{at(unknown[0])}: {sl.unknown('key', unknown[0], sorted(sl.TOP_KEYS))}"
        )
    for key in ("epochs", "batch_size"):
        value = data.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise InvalidInput(f"{at(key)}: {key} must be a whole number >= 1, not {value!r}")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise InvalidInput(
            f"{at('layers')}: 'layers' must be a non-empty list of {{type, config}} mappings"
        )
    node = keys["layers"]
    lines = (
        [n.start_mark.line + 1 for n in node.value]
        if isinstance(node, yaml.SequenceNode)
        else [None] * len(layers)
    )
    for i, entry in enumerate(layers):
        sl.check_layer(name, i + 1, entry, lines[i])
    for key, known in (
        ("cost", sl.COSTS),
        ("optimizer", sl.OPTIMIZERS),
        ("schedule", sl.SCHEDULES),
    ):
        if data.get(key) is not None:
            _at(at(key), sl.typed, data[key], key, known, None)
    if data.get("transform") is not None:
        if not isinstance(data["transform"], dict):
            raise InvalidInput(f"{at('transform')}: transform must be a mapping")
        _at(at("transform"), build_transform, data["transform"], False)
    return data, lines


def _at(where: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call fn; an InvalidInput it raises gets the file and line in front."""
    try:
        return fn(*args)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}") from exc


def _parse_py(name: str, text: str) -> Spec:
    try:
        tree = ast.parse(text, filename=name)
        compile(tree, name, "exec")
    except SyntaxError as exc:
        raise InvalidInput(f"{name} line {exc.lineno}: {exc.msg}") from exc
    except ValueError as exc:  # e.g. null bytes
        raise InvalidInput(f"{name}: {exc}") from exc
    constants: dict[str, Any] = {}
    for stmt in tree.body:
        target: ast.expr | None = None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        elif isinstance(stmt, ast.AnnAssign):
            target = stmt.target
        value = getattr(stmt, "value", None)
        if isinstance(target, ast.Name) and target.id in PY_CONSTANTS and value is not None:
            try:
                constants[target.id] = ast.literal_eval(value)
            except ValueError as exc:
                raise InvalidInput(
                    f"{name} line {stmt.lineno}: {target.id} must be a "
                    "literal (a number, or a dict of literals)"
                ) from exc
    for key in ("EPOCHS", "BATCH_SIZE"):
        value = constants.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise InvalidInput(f"{name}: {key} must be a whole number >= 1, not {value!r}")
    transform = constants.get("TRANSFORM")
    if transform is not None:
        if not isinstance(transform, dict):
            raise InvalidInput(f"{name}: TRANSFORM must be a dict, not {transform!r}")
        _at(name, build_transform, transform, False)
    if not any(isinstance(s, ast.FunctionDef) and s.name == "model" for s in tree.body):
        raise InvalidInput(f"{name} defines no model(num_classes, input_shape) function")
    return Spec(name, text, "py", constants.get("EPOCHS"), constants.get("BATCH_SIZE"), transform)


def build(spec: Spec, num_classes: int, input_shape: tuple[int, ...]) -> Built:
    """The model (in train mode), optimizer, loss and schedule a spec describes."""
    if type(num_classes) is not int or num_classes < 1:
        raise InvalidInput(f"num_classes must be a whole number >= 1, not {num_classes!r}")
    if not input_shape or any(type(d) is not int or d < 1 for d in input_shape):
        raise InvalidInput(f"input_shape must be positive whole numbers, not {input_shape!r}")
    built = (
        _build_yaml(spec, num_classes, input_shape)
        if spec.kind == "yaml"
        else _build_py(spec, num_classes, tuple(input_shape))
    )
    built.model.train()
    return built


def _build_yaml(spec: Spec, num_classes: int, input_shape: Sequence[int]) -> Built:
    data, lines = _load_yaml(spec.name, spec.text)
    model = sl.build_layers(data["layers"], lines, spec.name, num_classes, input_shape)
    ends = data["layers"][-1]["type"] == "Softmax"
    optimizer = _at(spec.name, sl.build_optimizer, data.get("optimizer"), model.parameters())
    schedule = _at(spec.name, sl.build_schedule, data.get("schedule"), optimizer, spec.epochs)
    return Built(
        model, optimizer, _at(spec.name, sl.build_cost, data.get("cost"), ends), schedule, ends
    )


def _user(name: str, what: str, call: Callable[[], T]) -> T:
    """Run user code; what it raises becomes InvalidInput with the user's line."""
    try:
        return call()
    except (Exception, SystemExit) as exc:
        tb, line = exc.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == name:
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f"{name} line {line}" if line else name
        raise InvalidInput(f"{where}: {what} raised {type(exc).__name__}: {exc}") from exc


def _build_py(spec: Spec, num_classes: int, input_shape: tuple[int, ...]) -> Built:
    module = types.ModuleType(f"ncloud_spec_{Path(spec.name).stem}")
    module.__file__ = spec.name
    code = compile(spec.text, spec.name, "exec")
    _user(spec.name, "the module", lambda: exec(code, module.__dict__))
    make = getattr(module, "model", None)
    if not callable(make):
        raise InvalidInput(f"{spec.name} defines no model(num_classes, input_shape) function")
    model = _user(spec.name, "model()", lambda: make(num_classes, input_shape))
    if not isinstance(model, nn.Module):
        raise InvalidInput(
            f"{spec.name}: model() returned {type(model).__name__}, not a torch.nn.Module"
        )
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        _forward(spec.name, model.eval(), input_shape)  # materialise Lazy* before the optimizer
    hooks = {k: getattr(module, k, None) for k in ("optimizer", "loss", "scheduler")}
    if callable(opt := hooks["optimizer"]):
        optimizer = _user(spec.name, "optimizer()", lambda: opt(model.parameters()))
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InvalidInput(f"{spec.name}: optimizer() must return a torch.optim.Optimizer")
    else:
        optimizer = _at(spec.name, sl.build_optimizer, None, model.parameters())
    loss: Any = nn.CrossEntropyLoss()
    if callable(make_loss := hooks["loss"]):
        loss = _user(spec.name, "loss()", make_loss)
        if not callable(loss):
            raise InvalidInput(f"{spec.name}: loss() must return a loss module")
    scheduler = None
    if callable(sched := hooks["scheduler"]):
        scheduler = _user(spec.name, "scheduler()", lambda: sched(optimizer))
    last: nn.Module = model
    while isinstance(last, nn.Sequential) and len(last):
        last = last[-1]
    return Built(model, optimizer, loss, scheduler, isinstance(last, nn.Softmax))


def _forward(name: str, model: nn.Module, input_shape: Sequence[int]) -> Any:
    """A Python spec's output for two dummy examples (int64 if it starts with an Embedding)."""
    first = next((m for m in model.modules() if not list(m.children())), None)
    x = sl.dummy_input(isinstance(first, nn.Embedding), input_shape)
    with torch.no_grad():
        return _user(name, "the forward pass", lambda: model(x))


def check(spec: Spec, num_classes: int, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Build the spec and pass two dummy examples through it; the output must fit the classes."""
    built = build(spec, num_classes, input_shape)
    model = built.model.eval()
    if spec.kind == "yaml":
        children = list(model.children())
        x = sl.dummy_input(isinstance(children[0], nn.Embedding), input_shape)
        data, lines = _load_yaml(spec.name, spec.text)
        for i, module in enumerate(children):
            x = sl.forward_one(module, x, i + 1, data["layers"][i]["type"], lines[i], spec.name)
        layers = len(children)
    else:
        x = _forward(spec.name, model, input_shape)
        layers = sum(1 for m in model.modules() if not list(m.children()))
    model.train()
    if not isinstance(x, torch.Tensor):
        raise InvalidInput(
            f"{spec.name}: the network returned {type(x).__name__}, "
            f"not a tensor of shape [2, {num_classes}]"
        )
    if list(x.shape) != [2, num_classes]:
        raise InvalidInput(
            f"{spec.name}: the network's output has shape {list(x.shape)} but the dataset has "
            f"{num_classes} classes: make the last layer's out_features num_classes"
        )
    parameters = sum(p.numel() for p in model.parameters())
    return {"parameters": parameters, "output_shape": list(x.shape), "layers": layers}


def check_request(request: dict[str, Any]) -> dict[str, Any]:
    """check() for a request of plain values; the reply is {"ok": ...} or {"error", "message"}."""
    name = str(request.get("name", "spec"))
    try:
        spec = parse_spec(name, request["text"])
        shape = tuple(int(d) for d in request["input_shape"])
        return {"ok": check(spec, int(request["num_classes"]), shape)}
    except NcloudError as exc:
        return {"error": exc.code, "message": exc.message}
    except BaseException as exc:  # anything else user code manages to raise
        return {"error": InvalidInput.code, "message": f"{name}: {type(exc).__name__}: {exc}"}
