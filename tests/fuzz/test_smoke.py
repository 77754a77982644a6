"""A short run of every fuzz target: seeds, regressions and a few thousand mutants.

The long, coverage-guided run is ``python tests/fuzz/run.py NAME --seconds N``
(see engine.py). Here each target gets the same deterministic inputs every
time, and any exception other than the ones it documents fails the test.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

_spec = importlib.util.spec_from_file_location(
    "p2pd_fuzz_engine", pathlib.Path(__file__).with_name("engine.py"))
assert _spec is not None and _spec.loader is not None
engine = importlib.util.module_from_spec(_spec)
sys.modules["p2pd_fuzz_engine"] = engine  # targets import it by this name
_spec.loader.exec_module(engine)

SMOKE_INPUTS = 3000


@pytest.mark.parametrize("name", engine.names())
def test_target_survives_smoke_run(name: str) -> None:
    module = engine.load(name)
    seeds = module.seeds()
    assert seeds, "a target needs seeds to start from"
    tried = 0
    for data in engine.mutations(seeds, getattr(module, "SMOKE_INPUTS", SMOKE_INPUTS)):
        try:
            module.target(data)
        except Exception as exc:  # a finding: show the input that caused it
            raise AssertionError(f"{name}: {type(exc).__name__} on input {data[:200].hex()}") from exc
        tried += 1
    assert tried > len(seeds)
