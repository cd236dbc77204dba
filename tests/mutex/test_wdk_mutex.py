"""The wdk-mutex suite as pytest tests: one test per scenario, through vmtest's pytest plugin.

By default the scenarios run against the Linux self-test guest (the Linux mirror of the driver). Point
the plugin at a Windows 11 configuration to run the real driver::

    pytest tests/mutex --vmtest-config my-windows11.yaml --vmtest-driver path/to/wdk_mutex_tests_package
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vmtest.events.scenarios import DEFAULT_SCENARIOS, NEGATIVE_CONTROLS
from vmtest.runner import ScenarioResult, ScenarioRunner

pytestmark = pytest.mark.e2e

RunScenario = Callable[..., ScenarioResult]


@pytest.mark.parametrize("scenario", DEFAULT_SCENARIOS)
def test_scenario(run_scenario: RunScenario, scenario: str) -> None:
    result = run_scenario(scenario, threads=3, iterations=100)
    assert result.passed, result.report()
    assert any(event.ev == "scenario-end" and event.scenario == scenario for event in result.events)


def test_lock_order_inversion_is_flagged(run_scenario: RunScenario) -> None:
    result = run_scenario("neg_lock_inversion")
    verdict = result.scenario("neg_lock_inversion")
    assert verdict.passed, result.report()
    assert any("lock-order inversion" in note for note in verdict.notes)


@pytest.mark.vmtest_guest("windows11")
def test_wait_at_dispatch_bugchecks_with_its_stop_code(run_scenario: RunScenario) -> None:
    result = run_scenario("neg_wait_at_dispatch")
    verdict = result.scenario("neg_wait_at_dispatch")
    assert verdict.passed, result.report()
    assert any(crash.code in (0xA, 0xD1, 0xB8) for crash in verdict.crashes)


@pytest.mark.vmtest_guest("linux")
def test_sleeping_in_atomic_context_is_caught(run_scenario: RunScenario) -> None:
    # Last: the Linux kernel survives "scheduling while atomic", but the guest is not pristine afterwards.
    result = run_scenario("neg_wait_at_dispatch")
    verdict = result.scenario("neg_wait_at_dispatch")
    assert verdict.passed, result.report()
    assert any("scheduling while atomic" in crash.message for crash in verdict.crashes)


def test_negative_controls_are_known() -> None:
    assert set(NEGATIVE_CONTROLS) == {"neg_lock_inversion", "neg_wait_at_dispatch"}


# With Driver Verifier on (IRQL checking and deadlock detection, or the configuration's driver.verifier),
# the wdk-mutex promise is checked by an independent referee: the positive scenarios produce no Verifier
# violation, and the negative controls are caught by Verifier as well as by vmtest's own checks.


@pytest.mark.vmtest_verifier
@pytest.mark.parametrize("scenario", DEFAULT_SCENARIOS)
def test_scenario_is_clean_under_driver_verifier(run_scenario: RunScenario, scenario: str) -> None:
    result = run_scenario(scenario, threads=3, iterations=100)
    assert result.passed, result.report()
    assert not [crash for crash in result.verdict.crashes if crash.violation is not None], result.report()


@pytest.mark.vmtest_verifier
def test_lock_order_inversion_is_caught_by_deadlock_detection(run_scenario: RunScenario) -> None:
    result = run_scenario("neg_lock_inversion")
    verdict = result.scenario("neg_lock_inversion")
    assert verdict.passed, result.report()
    violations = [crash.violation for crash in verdict.crashes if crash.violation is not None]
    assert [violation.name for violation in violations] == ["lock_hierarchy_violation"], result.report()


@pytest.mark.vmtest_verifier
def test_wait_at_dispatch_is_caught_under_irql_checking(
    run_scenario: RunScenario, vmtest_verifier_vm: ScenarioRunner
) -> None:
    vmtest_verifier_vm.reset()  # the inversion before bugchecked this VM
    result = run_scenario("neg_wait_at_dispatch")
    verdict = result.scenario("neg_wait_at_dispatch")
    assert verdict.passed, result.report()
