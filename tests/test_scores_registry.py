"""The strategy registry and knobs: plug-ins register themselves, knobs are typed and range-checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rmtdeploy.scores as scores
from rmtdeploy.errors import RmtdeployError
from rmtdeploy.scores import STRATEGIES, Strategy, get_strategy, strategy_names
from rmtdeploy.scores.rmt import RmtStrategy

PLUG_INS = {"data_rmt", "dynamic", "edge_budget", "hybrid", "magnitude", "rmt"}


def rmtdeploy_imports(path: Path) -> set[str]:
    """Every rmtdeploy module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rmtdeploy"):
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("rmtdeploy")}
    return found


@pytest.mark.parametrize("module", ["registry", "base", "knobs"])
def test_registry_and_base_import_no_strategy(module):
    imported = rmtdeploy_imports(Path(scores.__file__).parent / f"{module}.py")
    assert not {f"rmtdeploy.scores.{name}" for name in PLUG_INS} & imported
    assert "rmtdeploy.scores" not in imported  # the package imports the plug-ins


def test_every_strategy_module_registers_its_class_under_its_cli_name():
    assert (
        strategy_names()
        == sorted(STRATEGIES)
        == ["data-rmt", "dynamic", "edge-budget", "hybrid", "magnitude", "rmt"]
    )
    for name, cls in STRATEGIES.items():
        assert issubclass(cls, Strategy) and cls.name == name
        assert cls.__module__.rsplit(".", 1)[-1] in PLUG_INS


def test_capabilities_are_declared_not_inferred_from_names():
    assert [name for name, cls in STRATEGIES.items() if cls.takes_finetune_hook] == ["dynamic"]
    assert [name for name, cls in STRATEGIES.items() if cls.reads_calibration] == ["data-rmt"]
    assert get_strategy("dynamic", steps=3).steps == 3
    assert {get_strategy(name).steps for name in strategy_names() if name != "dynamic"} == {1}


def test_internal_state_is_not_a_knob():
    with pytest.raises(RmtdeployError, match="strategy 'dynamic' has no knob history"):
        get_strategy("dynamic", history=[{"step": 1}])
    assert get_strategy("dynamic").knobs() == {
        "steps": 4,
        "start": "magnitude",
        "then": "rmt",
        "drop_threshold": 0.7,
        "switch_depth": 0.2,
    }


@pytest.mark.parametrize(
    ("name", "knob", "value", "typed"),
    [
        ("dynamic", "steps", "3", 3),
        ("dynamic", "steps", 3.0, 3),
        ("dynamic", "drop_threshold", 1, 1.0),
        ("rmt", "tracy_widom_level", "0.95", 0.95),
        ("rmt", "norm_scales", "false", False),
        ("rmt", "norm_scales", 1, True),
        ("rmt", "allocation", "global", "global"),
    ],
)
def test_knob_values_are_converted_to_the_declared_type(name, knob, value, typed):
    converted = get_strategy(name, **{knob: value}).knobs()[knob]
    assert converted == typed and type(converted) is type(typed)


@pytest.mark.parametrize(
    ("name", "knobs", "message"),
    [
        ("dynamic", {"steps": "abc"}, "strategy 'dynamic' knob steps='abc': expected an integer"),
        ("dynamic", {"steps": 2.5}, "knob steps=2.5: expected an integer"),
        ("magnitude", {"p": "abc"}, "strategy 'magnitude' knob p='abc': expected an integer"),
        ("magnitude", {"p": True}, "knob p=True: expected an integer"),
        ("hybrid", {"epsilon": "nan"}, "knob epsilon='nan': expected a finite number"),
        ("rmt", {"norm_scales": "maybe"}, "knob norm_scales='maybe': expected true or false"),
        ("rmt", {"score": 3}, "knob score=3: expected one of signal, flow"),
        ("dynamic", {"start": 1}, "knob start=1: expected text"),
    ],
)
def test_a_knob_of_the_wrong_type_names_strategy_knob_value_and_type(name, knobs, message):
    with pytest.raises(RmtdeployError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_strategy(name, **knobs)


@pytest.mark.parametrize(
    ("name", "knobs", "message"),
    [
        ("dynamic", {"steps": 0}, "knob steps=0: must be >= 1"),
        ("dynamic", {"start": "dynamic"}, "knob start='dynamic': must name a one-shot strategy"),
        ("dynamic", {"then": "lottery"}, "knob then='lottery': must name a one-shot strategy"),
        ("dynamic", {"drop_threshold": -1}, "knob drop_threshold=-1.0"),
        ("dynamic", {"switch_depth": 1}, "knob switch_depth=1.0"),
        ("magnitude", {"p": 0}, "knob p=0"),
        ("rmt", {"tracy_widom_level": 2}, "knob tracy_widom_level=2.0: a quantile"),
        ("rmt", {"tie_break": -0.1}, "knob tie_break=-0.1"),
        ("hybrid", {"magnitude_until": 0.6}, "knob spectral_from=0.5"),
        ("hybrid", {"magnitude_until": 1.0, "spectral_from": 1.0}, "knob magnitude_until=1.0"),
        ("edge-budget", {"alpha_span": 0}, "knob alpha_span=0.0"),
        ("edge-budget", {"tail_weight": 2}, "knob tail_weight=2.0"),
    ],
)
def test_a_knob_out_of_range_fails_when_the_strategy_is_built(name, knobs, message):
    with pytest.raises(RmtdeployError, match=f"strategy '{name}' {message}"):
        get_strategy(name, **knobs)


def test_building_a_strategy_directly_checks_its_knobs_too():
    with pytest.raises(RmtdeployError, match="expected one of auto, uniform, global"):
        RmtStrategy(allocation="greedy")
