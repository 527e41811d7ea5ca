"""`normbench verify` and the parity matrix: vs float64 everywhere, vs the real tfa where it runs."""

from __future__ import annotations

import pytest

import tensorflow  # noqa: E402,F401 - a hard dependency: an import failure must fail

from conftest import CliRunner  # noqa: E402

from normbench import norms, verify  # noqa: E402
from normbench.cli import app  # noqa: E402

TFA_USABLE = norms.tfa_status()[0]


def test_matrix_covers_the_required_cases():
    cases = verify.CASES
    assert {c.axis for c in cases} >= {-1, 3, 1}
    assert {len(c.shape) for c in cases} == {2, 3, 4, 5}
    assert {c.groups for c in cases if not c.instance} >= {1, 2, 4, 8, -1}  # 1, 2, C/2, C, -1
    assert {(c.center, c.scale) for c in cases} >= {(True, True), (False, False), (True, False), (False, True)}
    assert {c.epsilon for c in cases} >= {1e-3, 1e-5}
    assert any(c.shape[0] == 1 for c in cases) and any(c.dynamic_batch for c in cases)
    assert any(c.instance for c in cases)


@pytest.mark.slow
@pytest.mark.parametrize("case", verify.CASES, ids=[c.name for c in verify.CASES])
def test_native_matches_float64_reference(case):
    result = verify.against_reference(case)
    assert result.ok, result


GRAPH_CASES = [c for c in verify.CASES if not c.dynamic_batch]


@pytest.mark.slow
@pytest.mark.parametrize("case", GRAPH_CASES, ids=[c.name for c in GRAPH_CASES])
def test_native_xla_kernel_matches_float64_reference(case):
    # inside a tf.function the layer runs its XLA-compiled kernels (what training uses)
    result = verify.against_reference(case, graph=True)
    assert result.ok, result


@pytest.mark.skipif(not TFA_USABLE, reason=f"tensorflow-addons unusable: {norms.tfa_status()[1]}")
@pytest.mark.parametrize("case", verify.CASES, ids=[c.name for c in verify.CASES])
def test_native_matches_real_tfa(case):
    result = verify.against(verify._tfa, "tfa", case)
    assert result.ok, result


@pytest.mark.slow
def test_whole_verify_run_passes_and_includes_tfa_where_it_runs():
    found = verify.run_all()
    assert all(r.ok for r in found), [r for r in found if not r.ok]
    checks = {r.check for r in found}
    assert ("native vs tfa" in checks) == TFA_USABLE
    assert {"batch independence", "large offset", "mixed_float16", "mixed_bfloat16",
            "batch independence (tf.function)", "large offset (tf.function)", "large input",
            "large input (tf.function)"} <= checks
    big = [r for r in found if r.check == "batch independence" and "600x400" in r.case]
    assert big and big[0].output_error < 1e-6  # tfa issue 2745's shape
    # 262,144 values per group: the XLA path's blocked matmul sums stay as exact as reductions
    large = {r.check: max(r.output_error, r.grad_error) for r in found if "large input" in r.check}
    assert max(large.values()) < 2e-6, large


def test_a_wrong_layer_fails_verification(monkeypatch):
    """The checks can fail: a layer with the wrong epsilon is caught."""
    case = verify.Case((2, 6, 6, 8), groups=4, epsilon=1e-3)
    wrong = verify.Case((2, 6, 6, 8), groups=4, epsilon=1e-1)
    monkeypatch.setattr(verify, "_native", lambda c: verify.__dict__["_keras"](wrong))
    assert not verify.against_reference(case).ok


@pytest.mark.slow
def test_cli_verify_quick():
    result = CliRunner().invoke(app, ["verify", "--quick", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"check": "native vs float64"' in result.stdout
    assert "worst: native vs float64" in result.stderr
