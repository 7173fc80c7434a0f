"""The layers, costs, optimizers and schedules a YAML model spec may name, built for torch.

Layer numbers in messages count from 1, the way a reader counts the items of the
``layers:`` list. Sizes that follow from the previous layer's output (``in_features``,
``in_channels``, ``num_features``, ``input_size``, ``normalized_shape``) may be left out:
they are filled in by passing a dummy batch through the layers built so far.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ncloud.errors import InvalidInput

NUM_CLASSES = "num_classes"  # a config value that means the dataset's number of classes
TOP_KEYS = {"epochs", "batch_size", "layers", "cost", "optimizer", "schedule", "transform"}
TOP_KEYS |= {"description"}


class LastStep(nn.Module):
    """An LSTM or GRU (batch_first) whose output is the last time step's features."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return out[:, -1, :]


def _recurrent(cls: type[nn.RNNBase]) -> Callable[..., nn.Module]:
    def make(**config: Any) -> nn.Module:
        return LastStep(cls(**{**config, "batch_first": True}))

    return make


# type -> (factory, {kwarg inferred from the input shape: function of that shape})
_LAST: Callable[[Sequence[int]], int] = lambda s: s[-1]  # noqa: E731
_CHANNELS: Callable[[Sequence[int]], int] = lambda s: s[1]  # noqa: E731
LAYERS: dict[str, tuple[Callable[..., nn.Module], dict[str, Callable[[Sequence[int]], Any]]]] = {
    "Linear": (nn.Linear, {"in_features": _LAST}),
    "Conv1d": (nn.Conv1d, {"in_channels": _CHANNELS}),
    "Conv2d": (nn.Conv2d, {"in_channels": _CHANNELS}),
    "BatchNorm1d": (nn.BatchNorm1d, {"num_features": _CHANNELS}),
    "BatchNorm2d": (nn.BatchNorm2d, {"num_features": _CHANNELS}),
    "LayerNorm": (nn.LayerNorm, {"normalized_shape": _LAST}),
    "ReLU": (nn.ReLU, {}),
    "Tanh": (nn.Tanh, {}),
    "Sigmoid": (nn.Sigmoid, {}),
    "GELU": (nn.GELU, {}),
    "LeakyReLU": (nn.LeakyReLU, {}),
    "Softmax": (nn.Softmax, {}),
    "LogSoftmax": (nn.LogSoftmax, {}),
    "MaxPool1d": (nn.MaxPool1d, {}),
    "MaxPool2d": (nn.MaxPool2d, {}),
    "AvgPool2d": (nn.AvgPool2d, {}),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, {}),
    "Dropout": (nn.Dropout, {}),
    "Flatten": (nn.Flatten, {}),
    "Embedding": (nn.Embedding, {}),
    "LSTM": (_recurrent(nn.LSTM), {"input_size": _LAST}),
    "GRU": (_recurrent(nn.GRU), {"input_size": _LAST}),
    "Identity": (nn.Identity, {}),
}
# Defaults that make the common case a one-liner: text arrives as byte values 0..255.
DEFAULTS: dict[str, dict[str, Any]] = {
    "Embedding": {"num_embeddings": 256},
    "Softmax": {"dim": 1},
    "LogSoftmax": {"dim": 1},
}
# The short names, and torch's own (as the layers take torch's names).
COSTS = {
    "CrossEntropy": nn.CrossEntropyLoss,
    "NLL": nn.NLLLoss,
    "CrossEntropyLoss": nn.CrossEntropyLoss,
    "NLLLoss": nn.NLLLoss,
}
# neon's names (Nervana's spec files) that mean something else here: refused, naming ours.
NEON = {
    "batchsize": "batch_size",
    "Affine": "Linear (config: {out_features: N}; the activation is a layer of its own)",
    "Conv": "Conv2d (config: {out_channels: N, kernel_size: K})",
    "Pooling": "MaxPool2d or AvgPool2d (config: {kernel_size: K})",
    "Rectlin": "ReLU",
    "Logistic": "Sigmoid",
    "Explin": "ELU",
    "GeneralizedCost": "cost: CrossEntropy",
    "CrossEntropyMulti": "CrossEntropy",
    "CrossEntropyBinary": "a Sigmoid layer and cost: CrossEntropy over two classes",
    "GradientDescentMomentum": "SGD (config: {lr: 0.01, momentum: 0.9})",
    "RMSProp": "RMSprop",
}
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "SGD": torch.optim.SGD,
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "RMSprop": torch.optim.RMSprop,
}
SCHEDULES: dict[str, Any] = {
    "StepLR": torch.optim.lr_scheduler.StepLR,
    "CosineAnnealingLR": torch.optim.lr_scheduler.CosineAnnealingLR,
    "ExponentialLR": torch.optim.lr_scheduler.ExponentialLR,
}


def _numbers(config: Mapping[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; take it as the number that was meant."""
    out = dict(config)
    for key, value in out.items():
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def _classes(config: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    return {k: num_classes if v == NUM_CLASSES else v for k, v in config.items()}


def _message(exc: BaseException) -> str:
    """torch's own first line; the class name too where the text alone is unclear."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, RuntimeError | TypeError | ValueError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def unknown(what: str, name: object, known: Iterable[str]) -> str:
    """Why a name is refused: neon's spelling of ours, the close match, and what is known."""
    import difflib

    known = list(known)
    if isinstance(name, str) and name in NEON:
        return f"{what} {name!r} is neon's name: ncloud's is {NEON[name]}"
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}; known: {', '.join(known)}"


def layer_error(
    index: int, kind: str | None, line: int | None, name: str, problem: str
) -> InvalidInput:
    where = f"{name} line {line}: " if line else f"{name}: "
    what = f"layer {index} ({kind})" if kind else f"layer {index}"
    return InvalidInput(f"{where}{what}: {problem}")


def check_layer(name: str, index: int, entry: Any, line: int | None) -> None:
    """Raise InvalidInput unless entry is a {type, config} mapping naming a known layer."""
    kind = entry.get("type") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or not set(entry) <= {"type", "config"} or kind is None:
        raise layer_error(
            index,
            None,
            line,
            name,
            "each layer must be a mapping like "
            f"{{type: Linear, config: {{out_features: 64}}}}, not {entry!r}",
        )
    if kind not in LAYERS:
        raise layer_error(index, None, line, name, unknown("layer type", kind, LAYERS))
    if not isinstance(entry.get("config") or {}, dict):
        raise layer_error(index, kind, line, name, "config must be a mapping of arguments")


def dummy_input(tokens: bool, input_shape: Sequence[int], n: int = 2) -> torch.Tensor:
    """Zeros of the loader's dtype: int64 token ids when the network starts with an Embedding."""
    dtype = torch.int64 if tokens else torch.float32
    return torch.zeros((n, *input_shape), dtype=dtype)


def build_layers(
    layers: Sequence[Mapping[str, Any]],
    lines: Sequence[int | None],
    name: str,
    num_classes: int,
    input_shape: Sequence[int],
) -> nn.Sequential:
    """One module per layer entry, sizes inferred from a dummy batch passed along the way."""
    modules: list[nn.Module] = []
    x: torch.Tensor | None = None
    for i, entry in enumerate(layers):
        kind = str(entry["type"])
        line = lines[i] if i < len(lines) else None
        factory, inferred = LAYERS[kind]
        config = {**DEFAULTS.get(kind, {}), **_classes(entry.get("config") or {}, num_classes)}
        if x is None:
            x = dummy_input(kind == "Embedding", input_shape)
        try:
            for key, infer in inferred.items():
                if key not in config:
                    config[key] = infer(tuple(x.shape))
            module = factory(**config)
        except Exception as exc:
            raise layer_error(i + 1, kind, line, name, _message(exc)) from exc
        module.eval()
        x = forward_one(module, x, i + 1, kind, line, name)
        modules.append(module)
    return nn.Sequential(*modules)


def forward_one(
    module: nn.Module, x: torch.Tensor, index: int, kind: str, line: int | None, name: str
) -> torch.Tensor:
    """Run one layer on x, naming the layer and the input shape if it fails."""
    try:
        with torch.no_grad():
            return module(x)
    except Exception as exc:
        shape = list(x.shape)
        raise layer_error(index, kind, line, name, f"input {shape}: {_message(exc)}") from exc


def build_cost(cost: Any, ends_in_softmax: bool) -> nn.Module:
    """The loss; after a Softmax layer cross-entropy is taken on the log of the probabilities."""
    kind, config = typed(cost, "cost", COSTS, "CrossEntropy")
    try:
        loss = COSTS[kind](**config)
    except Exception as exc:
        raise InvalidInput(f"cost {kind}: {_message(exc)}") from exc
    cross_entropy = COSTS[kind] is nn.CrossEntropyLoss
    return ProbabilityNLL(loss) if ends_in_softmax and cross_entropy else loss


class ProbabilityNLL(nn.Module):
    """Cross-entropy for a network whose outputs are already probabilities."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        cfg = {k: getattr(loss, k) for k in ("weight", "ignore_index", "reduction")}
        self.nll = nn.NLLLoss(**cfg)

    def forward(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.nll(torch.log(probs.clamp_min(1e-12)), targets)


def build_optimizer(spec: Any, params: Any) -> torch.optim.Optimizer:
    kind, config = typed(spec, "optimizer", OPTIMIZERS, "Adam")
    config.setdefault("lr", 1e-3)
    try:
        return OPTIMIZERS[kind](params, **config)
    except Exception as exc:
        raise InvalidInput(f"optimizer {kind}: {_message(exc)}") from exc


def build_schedule(spec: Any, optimizer: torch.optim.Optimizer, epochs: int | None) -> Any:
    """A scheduler stepped once per epoch, or None; CosineAnnealingLR's T_max defaults to epochs."""
    if spec is None:
        return None
    kind, config = typed(spec, "schedule", SCHEDULES, None)
    if kind == "CosineAnnealingLR":
        config.setdefault("T_max", epochs or 10)
    try:
        return SCHEDULES[kind](optimizer, **config)
    except Exception as exc:
        raise InvalidInput(f"schedule {kind}: {_message(exc)}") from exc


def typed(
    spec: Any, what: str, known: Mapping[str, Any], default: str | None
) -> tuple[str, dict[str, Any]]:
    """(type, config) of a ``{type, config}`` mapping or a bare type name."""
    if spec is None and default is not None:
        return default, {}
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping) or not set(spec) <= {"type", "config"}:
        raise InvalidInput(f"{what} must be a type name or a mapping with 'type' and 'config'")
    kind = spec.get("type", default)
    if kind not in known:
        raise InvalidInput(unknown(f"{what} type", kind, known))
    config = spec.get("config") or {}
    if not isinstance(config, Mapping):
        raise InvalidInput(f"{what} config must be a mapping of keyword arguments")
    return str(kind), _numbers(config)
