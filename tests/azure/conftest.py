"""Fixtures of the Azure platform tests: mocked program runs with Azure's answers (see
tests/helpers/azure_mock_engine.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from copilot_fleet import render
from copilot_fleet.stackfile import read_stack_config
from tests.helpers.azure_mock_engine import PROJECT_DIR, AzureRecordingMocks, Run


@pytest.fixture
def run_mocked() -> Callable[..., Run]:
    """run_mocked(config, secret_keys, stack=..., program=None): a mocked run with Azure answers."""

    def run(config: Mapping[str, Any], secret_keys: set[str] | frozenset[str] = frozenset(), *, stack: str,
            program: Callable[[], Mapping[str, Any]] | None = None) -> Run:
        result = render.run_program(config, secret_keys, stack=stack, program=program, mocks=AzureRecordingMocks())
        return Run(result.registrations, result.outputs, result.secret_outputs)

    return run


_STACK_RUNS: dict[str, Run] = {}


@pytest.fixture
def stack_run(run_mocked: Callable[..., Run]) -> Iterator[Callable[[str], Run]]:
    """The example stack's full program run (copilot_fleet.program.run), once per stack per session."""

    def get(stack: str) -> Run:
        if stack not in _STACK_RUNS:
            values, secret = read_stack_config(PROJECT_DIR, stack)
            _STACK_RUNS[stack] = run_mocked(values, secret, stack=stack)
        return _STACK_RUNS[stack]

    yield get
