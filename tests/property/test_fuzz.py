"""The 100,000-input fuzz run of markd.codes.parse (seed from MARKD_FUZZ_SEED, default 0)."""

from __future__ import annotations

import os

import pytest
from tests.property.fuzz_codes import run


@pytest.mark.slow
def test_fuzz_100k_inputs_only_code_errors():
    seed = int(os.environ.get("MARKD_FUZZ_SEED", "0"))
    outcomes = run(100_000, seed=seed)
    assert sum(outcomes.values()) == 100_000
    # The mix must exercise both sides of the contract, or the fuzzer has gone blind.
    assert sum(v for k, v in outcomes.items() if k.startswith("ok:")) > 5_000
    assert outcomes["ambiguous-lost-gs"] > 100
    assert len([k for k in outcomes if not k.startswith("ok:")]) >= 8
