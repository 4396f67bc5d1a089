"""Fixtures shared by the engine's test modules."""

import json
from pathlib import Path

import pytest

EDIT_CASES = Path(__file__).parent / "fixtures" / "edit_cases_world.json"


@pytest.fixture(scope="module")
def fixture():
    """The edit cases of the tiny models' world (``fixtures/edit_cases_world.json``): cases, corpus, bos_id."""
    with open(EDIT_CASES) as f:
        return json.load(f)
