"""Model specs: parsing, building and checking YAML and Python networks (no Ray)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from jobs.models.specs import Spec, build, check, parse_spec
from jobs.sandbox.check import check_spec
from ncloud.errors import InvalidInput

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DIGITS = (1, 16, 16)


def _yaml(body: str, name: str = "net.yaml") -> Spec:
    return parse_spec(name, textwrap.dedent(body))


def _py(body: str, name: str = "net.py") -> Spec:
    return parse_spec(name, textwrap.dedent(body))


@pytest.mark.parametrize("name", ["mlp.yaml", "cnn.yaml", "resnet.py"])
def test_examples_build_and_check(name: str) -> None:
    spec = parse_spec(name, (EXAMPLES / name).read_text())
    assert spec.epochs == 10 and spec.batch_size == 64
    assert spec.transform == {"mean": 0.5, "std": 0.5}
    report = check(spec, 10, DIGITS)
    assert report["output_shape"] == [2, 10]
    assert report["parameters"] > 1000
    built = build(spec, 10, DIGITS)
    assert built.model.training and not built.ends_in_softmax
    assert isinstance(built.optimizer, torch.optim.Adam)


def test_yaml_syntax_error_names_the_line() -> None:
    text = "epochs: 3\nlayers:\n  - type: Linear\n    config: {out_features: 3\n"
    with pytest.raises(InvalidInput, match=r"^bad\.yaml line 5: .*mapping that starts on line 4"):
        parse_spec("bad.yaml", text)
    with pytest.raises(InvalidInput, match=r"bad\.yaml line 2: .*mapping values"):
        parse_spec("bad.yaml", "epochs: 3\nlayers: a: b\n")


def test_unknown_layer_type_names_the_layer_and_known_types() -> None:
    body = """\
        layers:
          - type: Flatten
          - type: Linaer
            config: {out_features: 3}
        """
    with pytest.raises(InvalidInput) as err:
        _yaml(body)
    assert "net.yaml line 3: layer 2: unknown layer type 'Linaer'" in err.value.message
    assert "(did you mean 'Linear'?)" in err.value.message and "Conv2d" in err.value.message


@pytest.mark.parametrize("cost", ["CrossEntropyLoss", "NLLLoss", "CrossEntropy", "NLL"])
def test_the_cost_takes_torchs_names_and_the_short_ones(cost: str) -> None:
    spec = _yaml(
        f"layers: [{{type: Flatten}}, {{type: Linear, config: {{out_features: 10}}}}]\n"
        f"cost: {cost}\n"
    )
    built = build(spec, 10, DIGITS)
    wanted = torch.nn.NLLLoss if cost.startswith("NLL") else torch.nn.CrossEntropyLoss
    assert isinstance(built.loss, wanted)


def test_a_misspelt_cost_names_the_close_match() -> None:
    with pytest.raises(InvalidInput) as err:
        _yaml("layers: [{type: Flatten}]\ncost: CrossEntropyLos\n")
    assert err.value.message.startswith("net.yaml line 2: unknown cost type 'CrossEntropyLos'")
    assert "(did you mean 'CrossEntropyLoss'?)" in err.value.message


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            "batchsize: 32\nlayers: [{type: Flatten}]\n",
            "line 1: key 'batchsize' is neon's name: ncloud's is batch_size",
        ),
        (
            "layers:\n  - type: Affine\n    config: {nout: 10}\n",
            "line 2: layer 1: layer type 'Affine' is neon's name: ncloud's is Linear",
        ),
        (
            "layers: [{type: Flatten}]\noptimizer: GradientDescentMomentum\n",
            "line 2: optimizer type 'GradientDescentMomentum' is neon's name: ncloud's is SGD",
        ),
    ],
)
def test_neons_names_are_refused_naming_ncloud_spelling(body: str, said: str) -> None:
    with pytest.raises(InvalidInput) as err:
        _yaml(body)
    assert said in err.value.message


def test_bad_layer_config_names_the_layer() -> None:
    spec = _yaml("""\
        layers:
          - type: Conv2d
            config: {out_channels: 4, kernal_size: 3}
        """)
    with pytest.raises(InvalidInput, match=r"line 2: layer 1 \(Conv2d\): .*kernal_size"):
        build(spec, 10, DIGITS)


def test_shape_mismatch_names_the_layer() -> None:
    spec = _yaml("""\
        layers:
          - type: Flatten
          - type: Linear
            config: {in_features: 100, out_features: num_classes}
        """)
    with pytest.raises(InvalidInput, match=r"layer 2 \(Linear\): input \[2, 256\]"):
        check(spec, 10, DIGITS)


def test_output_that_does_not_match_the_classes() -> None:
    spec = _yaml("layers: [{type: Flatten}, {type: Linear, config: {out_features: 7}}]\n")
    with pytest.raises(InvalidInput, match=r"output has shape \[2, 7\] but the dataset has 10"):
        check(spec, 10, DIGITS)


@pytest.mark.parametrize("key", ["epochs", "batch_size"])
@pytest.mark.parametrize("value", ["0", "-2", "1.5", "ten"])
def test_epochs_and_batch_size_must_be_positive(key: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=rf"net\.yaml line 1: {key} must be"):
        _yaml(f"{key}: {value}\nlayers: [{{type: Flatten}}]\n")


def test_yaml_structure_is_validated() -> None:
    with pytest.raises(InvalidInput, match="unknown key 'layer'"):
        _yaml("layer: []\n")
    with pytest.raises(InvalidInput, match="non-empty list"):
        _yaml("epochs: 2\nlayers: []\n")
    with pytest.raises(InvalidInput, match="unknown optimizer type 'Adamm'"):
        _yaml("layers: [{type: Flatten}]\noptimizer: {type: Adamm}\n")
    with pytest.raises(InvalidInput, match=r"line 2: unknown image transform keys"):
        _yaml("layers: [{type: Flatten}]\ntransform: {mean: 0.5, sdt: 0.5}\n")
    with pytest.raises(InvalidInput, match=r"line 2: layer 1: each layer must be a mapping"):
        _yaml("layers:\n  - Flatten\n")
    with pytest.raises(InvalidInput, match=r"net\.yaml: schedule StepLR: .*step_size"):
        spec = _yaml("layers: [{type: Linear, config: {out_features: 2}}]\nschedule: StepLR\n")
        build(spec, 10, (3,))
    with pytest.raises(InvalidInput, match=r"must be a \.yaml, \.yml or \.py"):
        parse_spec("net.txt", "layers: []")


def test_yaml_options_softmax_schedule_and_text_input() -> None:
    spec = _yaml("""\
        layers:
          - {type: Embedding, config: {embedding_dim: 8}}
          - {type: GRU, config: {hidden_size: 16}}
          - {type: Linear, config: {out_features: num_classes}}
          - {type: Softmax}
        optimizer: {type: SGD, config: {lr: 1e-2, momentum: 0.9}}
        schedule: {type: CosineAnnealingLR}
        epochs: 4
        """)
    built = build(spec, 3, (12,))
    assert built.ends_in_softmax and built.optimizer.param_groups[0]["lr"] == 0.01
    assert built.scheduler is not None and built.scheduler.T_max == 4
    probs = built.model(torch.zeros(5, 12, dtype=torch.int64))
    assert torch.allclose(probs.sum(1), torch.ones(5))
    assert built.loss(probs, torch.zeros(5, dtype=torch.int64)).item() > 0
    assert check(spec, 3, (12,))["output_shape"] == [2, 3]


def test_py_syntax_error_names_the_line() -> None:
    with pytest.raises(InvalidInput, match=r"^net\.py line 3: "):
        _py("import torch\n\ndef model(num_classes, input_shape)\n    return None\n")


def test_py_without_model_function() -> None:
    with pytest.raises(InvalidInput, match=r"net\.py defines no model\(num_classes, input_"):
        _py("import torch\nEPOCHS = 3\n")


def test_py_constants_are_read_without_running_the_file() -> None:
    spec = _py("""\
        raise SystemExit("never at parse time")
        EPOCHS = 3
        BATCH_SIZE: int = 16
        TRANSFORM = {"mean": [0.5], "std": [0.25]}
        def model(num_classes, input_shape):
            pass
        """)
    assert (spec.epochs, spec.batch_size, spec.transform) == (3, 16, {"mean": [0.5], "std": [0.25]})
    with pytest.raises(InvalidInput, match="line 1: EPOCHS must be a literal"):
        _py("EPOCHS = int('3')\ndef model(n, s):\n    pass\n")
    with pytest.raises(InvalidInput, match="BATCH_SIZE must be a whole number >= 1"):
        _py("BATCH_SIZE = 0\ndef model(n, s):\n    pass\n")


def test_py_model_that_raises_names_the_user_line() -> None:
    spec = _py("""\
        from torch import nn

        def model(num_classes, input_shape):
            raise ValueError("only colour images")
        """)
    with pytest.raises(InvalidInput) as err:
        build(spec, 10, DIGITS)
    assert err.value.message == "net.py line 4: model() raised ValueError: only colour images"


def test_py_model_must_return_a_module() -> None:
    spec = _py("def model(num_classes, input_shape):\n    return 42\n")
    with pytest.raises(InvalidInput, match=r"model\(\) returned int, not a torch\.nn\.Module"):
        build(spec, 10, DIGITS)


GOOD_PY = """\
from torch import nn

print("user output must not garble the reply")

def model(num_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
"""


def test_sandboxed_check_round_trip() -> None:
    report = check_spec(parse_spec("good.py", GOOD_PY), 10, DIGITS, tenant_id=1)
    assert report == {"parameters": 256 * 10 + 10, "output_shape": [2, 10], "layers": 2}
    bad = parse_spec("bad.py", GOOD_PY.replace("nn.LazyLinear(num_classes)", "nn.LazyLinear(7)"))
    with pytest.raises(InvalidInput, match=r"bad\.py: the network's output has shape \[2, 7\]"):
        check_spec(bad, 10, DIGITS, tenant_id=1)


def test_sandboxed_check_times_out() -> None:
    slow = parse_spec("slow.py", "import time\ntime.sleep(30)\ndef model(n, s):\n    pass\n")
    with pytest.raises(InvalidInput, match=r"checking slow\.py took over 1\.5s"):
        check_spec(slow, 10, DIGITS, tenant_id=1, timeout_s=1.5)


def test_mlp_learns_a_separable_problem() -> None:
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 3
    y = torch.randint(0, 4, (256,))
    x = centres[y] + torch.randn(256, 16)
    built = build(parse_spec("mlp.yaml", (EXAMPLES / "mlp.yaml").read_text()), 4, (16,))
    for _ in range(40):
        loss = built.loss(built.model(x), y)
        built.optimizer.zero_grad()
        loss.backward()
        built.optimizer.step()
    built.model.eval()
    with torch.no_grad():
        accuracy = (built.model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9
