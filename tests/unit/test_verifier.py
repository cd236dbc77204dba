"""Driver Verifier: its configuration, commands and outputs, the violation table, and verdicts under it."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError
from scripted_windows import ScriptedWindows

from vmtest.config.models import VmtestConfig
from vmtest.config.verifier import VerifierConfig
from vmtest.drivers.lifecycle import DeployedDriver
from vmtest.drivers.verifier import (
    REGISTRY_QUERY,
    enable_command,
    guest_setup,
    parse_query,
    parse_registry,
    verifier_confirmation,
)
from vmtest.errors import GuestError
from vmtest.guests import Guest
from vmtest.pipeline import confirm_verifier, switch_verifier_on
from vmtest.progress import PlainProgress
from vmtest.verdict.analyze import judge_lines
from vmtest.verdict.config import ExpectedCrash, VerdictConfig
from vmtest.verdict.crashes import Crash
from vmtest.verdict.verifier_rules import (
    OPTIONS,
    STANDARD_FLAGS,
    VIOLATIONS,
    decode_violation,
    option_by_name,
)

T = TypeVar("T")
DATA = Path(__file__).resolve().parents[1] / "data" / "windows" / "verifier"
DRIVER = "wdk_mutex_tests.sys"


def sample(name: str) -> str:
    return (DATA / name).read_bytes().decode()


def windows(**driver: Any) -> VmtestConfig:
    return VmtestConfig.model_validate({"guest": {"kind": "windows11", "password": "pw"}, "driver": driver})


# ----------------------------------------------------------------------------------------- the table


def test_the_deadlock_subcode_decodes_to_the_rule_that_caught_it() -> None:
    violation = decode_violation(0xC4, (0x1001, 0xFFFFA00012345678, 0, 0))
    assert violation is not None and violation.option == "deadlock_detection"
    text = violation.describe((0x1001, 0xFFFFA00012345678, 0, 0))
    assert text.startswith("Driver Verifier, deadlock detection: lock-order violation (0x1001)")
    assert "resource that caused the deadlock 0xffffa00012345678" in text


def test_codes_outside_verifier_are_not_violations_and_unknown_subcodes_still_say_verifier() -> None:
    assert decode_violation(0xD1, (0, 2, 0, 0)) is None
    unknown = decode_violation(0xC4, (0x7777, 0, 0, 0))
    assert unknown is not None and unknown.name == "unlisted_violation"
    ddi = decode_violation(0xC4, (0x20005, 0, 0, 0))
    assert ddi is not None and ddi.option == "ddi_compliance"
    extended = decode_violation(0x100000C4, (0x1001, 0, 0, 0))  # the _M form reports the same
    assert extended is not None and extended.name == "lock_hierarchy_violation"
    assert decode_violation(0xC1, (0, 0, 0, 0)) is not None


def test_every_violation_names_an_option_and_standard_is_the_documented_set() -> None:
    for violation in VIOLATIONS:
        assert option_by_name(violation.option) is not None, violation
    standard = {option.name for option in OPTIONS if option.flag & STANDARD_FLAGS}
    assert standard == {
        "special_pool", "irql_checking", "pool_tracking", "io_verification", "deadlock_detection",
        "dma_checking", "security_checks", "miscellaneous_checks", "ddi_compliance",
    }  # fmt: skip
    volatile = {option.flag for option in OPTIONS if option.volatile}
    assert volatile == {0x4, 0x20, 0x80, 0x200, 0x400}  # "Using Volatile Settings", Windows 11


# --------------------------------------------------------------------------------------- configuration


def test_the_default_rules_need_a_reboot_and_deadlock_detection_alone_does_not() -> None:
    config = windows(verifier={})
    assert config.driver.verifier is not None
    assert config.driver.verifier.flags == 0x22 and not config.driver.verifier.volatile
    alone = windows(verifier={"rules": ["deadlock_detection"], "reboot": False}).driver.verifier
    assert alone is not None and alone.volatile and alone.flags == 0x20
    assert windows(verifier={"rules": "standard"}).driver.verifier.flags == STANDARD_FLAGS  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"rules": ["irql_checking"], "reboot": False}, "only after a reboot"),
        ({"rules": ["no_such_rule"]}, "unknown Driver Verifier rule no_such_rule"),
        ({"rules": []}, "name at least one rule"),
        ({"rules": ["deadlock_detection"], "spare": 1}, "Extra inputs"),
    ],
)
def test_bad_verifier_sections_are_refused_with_the_reason(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        windows(verifier=section)


def test_verifier_on_a_linux_guest_is_refused() -> None:
    with pytest.raises(ValidationError, match="only on a Windows guest"):
        VmtestConfig.model_validate({"driver": {"verifier": {}}})


def test_expected_crashes_accept_verifier_rules_by_name() -> None:
    expected = ExpectedCrash(verifier=frozenset({"deadlock_detection"}))
    caught = Crash("kd", 0xC4, (0x1001, 0, 0, 0))
    assert expected.accepts(caught)
    assert not expected.accepts(Crash("kd", 0xC4, (0x122, 0, 0, 0)))
    assert ExpectedCrash(verifier=frozenset({"wait_at_dispatch_with_timeout"})).accepts(
        Crash("qemu-hv", 0xC4, (0x122, 0, 0, 0))
    )
    with pytest.raises(ValidationError, match="unknown Driver Verifier option or violation"):
        ExpectedCrash(verifier=frozenset({"lock_order"}))


# ------------------------------------------------------------------------------------ commands, outputs


def test_commands_switch_the_rules_on_for_the_driver_only() -> None:
    reboot = VerifierConfig()
    assert enable_command(reboot, DRIVER) == ["verifier", "/flags", "0x22", "/driver", DRIVER]
    at_once = VerifierConfig(rules=("deadlock_detection",), reboot=False)
    assert enable_command(at_once, DRIVER) == [
        "verifier",
        "/volatile",
        "/flags",
        "0x20",
        "/adddriver",
        DRIVER,
    ]
    assert enable_command(VerifierConfig(rules="standard"), DRIVER) == [
        "verifier",
        "/standard",
        "/driver",
        DRIVER,
    ]


def test_the_registry_settings_for_the_next_boot_are_read_as_reg_query_prints_them() -> None:
    assert parse_registry(sample("reg_memory_management_verifier.txt")) == (0x22, (DRIVER,))
    assert parse_registry(sample("reg_memory_management_unset.txt")) == (0, ())


def test_query_shows_the_level_in_effect_and_the_driver_loads() -> None:
    state = parse_query(sample("query_irql_deadlock.txt"))
    assert state.level == 0x22 and state.drivers == {DRIVER: (1, 1)}
    line = verifier_confirmation(VerifierConfig(), DRIVER, state)
    assert "irql_checking, deadlock_detection" in line and "loads 1" in line
    with pytest.raises(GuestError, match="not applying special_pool"):
        verifier_confirmation(VerifierConfig(rules=("special_pool",)), DRIVER, state)
    with pytest.raises(GuestError, match=r"does not list other\.sys"):
        verifier_confirmation(VerifierConfig(), "other.sys", state)


# ------------------------------------------------------------------- ordering: enable, reboot, snapshot


@dataclass
class VerifierGuest(ScriptedWindows):
    """A Windows guest's verifier command: registry settings that take effect at the next boot."""

    registry: str = "reg_memory_management_unset.txt"

    def answer(self, argv: list[str]) -> tuple[int, bytes]:
        if argv == REGISTRY_QUERY:
            return 0, sample(self.registry).encode()
        if argv == ["verifier", "/query"]:
            return 0, sample("query_irql_deadlock.txt").encode()
        if argv[:2] == ["verifier", "/flags"]:  # recorded for the next boot: exit 2, "reboot needed"
            self.registry = "reg_memory_management_verifier.txt"
            return 2, sample("flags_reboot_needed.txt").encode()
        raise AssertionError(" ".join(argv))


class StandInSession:
    """What switch_verifier_on uses of a VmSession, recording the order of what happened."""

    def __init__(self, config: VmtestConfig, transport: VerifierGuest) -> None:
        self.config = config
        self.transport = transport
        self.progress = PlainProgress(io.StringIO())
        self.happened: list[str] = []

    @contextlib.contextmanager
    def step(self, phase: str, description: str) -> Iterator[None]:
        self.happened.append(phase)
        yield

    async def call(self, function: Callable[..., T], *args: object, timeout: float, what: str) -> T:
        return function(*args)

    async def reboot(self, command: Sequence[str], reason: str) -> Guest:
        self.happened.append("reboot " + " ".join(command))
        return Guest(self.transport, drivers=None)  # type: ignore[arg-type]


def test_rules_needing_a_reboot_are_switched_on_then_rebooted_into_once() -> None:
    transport = VerifierGuest()
    session = StandInSession(windows(verifier={}), transport)
    driver = DeployedDriver("wdk_mutex_tests", r"C:\vmtest\run", rf"C:\vmtest\run\{DRIVER}")
    verifier = session.config.driver.verifier
    assert verifier is not None
    guest = Guest(transport, drivers=None)  # type: ignore[arg-type]
    after = asyncio.run(switch_verifier_on(session, guest, driver, verifier))  # type: ignore[arg-type]
    assert after is not guest, "the guest is logged into again after the reboot"
    assert session.happened == ["verifier", "reboot shutdown /r /f /t 0"]
    assert transport.commands == [" ".join(REGISTRY_QUERY), f"verifier /flags 0x22 /driver {DRIVER}"]
    # A guest restored from a snapshot taken after this step has the rules already: no second reboot.
    again = StandInSession(windows(verifier={}), transport)
    assert asyncio.run(switch_verifier_on(again, guest, driver, verifier)) is guest  # type: ignore[arg-type]
    assert again.happened == ["verifier"]
    line = asyncio.run(confirm_verifier(again, guest, driver, verifier))  # type: ignore[arg-type]
    assert "Level 0x22" in line


def test_a_snapshot_with_verifier_never_shares_an_entry_with_one_without(tmp_path: Path) -> None:
    package = tmp_path / "package"
    package.mkdir()
    (package / DRIVER).write_bytes(b"MZ")
    with_verifier = guest_setup(windows(package=str(package), verifier={}))
    assert with_verifier == {
        "verifier": {"flags": 0x22, "rules": ["irql_checking", "deadlock_detection"], "driver": DRIVER}
    }
    assert guest_setup(windows(package=str(package))) == {}


# --------------------------------------------------------------------------------------------- verdicts


INVERSION = [
    "VMTEST1 seq=1 ev=run-start driver=wdk_mutex_tests proto=1 os=windows build=0.1.0",
    "VMTEST1 seq=2 ev=scenario-start sc=neg_lock_inversion params=threads:2,iterations:1",
    "VMTEST1 seq=3 ev=mutex sc=neg_lock_inversion m=a k=kmutex",
    "VMTEST1 seq=4 ev=mutex sc=neg_lock_inversion m=b k=kmutex",
    "VMTEST1 seq=5 ev=acquire sc=neg_lock_inversion t=0 m=a k=kmutex irql=0",
    "VMTEST1 seq=6 ev=acquired sc=neg_lock_inversion t=0 m=a k=kmutex irql=0 depth=1",
    "VMTEST1 seq=7 ev=acquire sc=neg_lock_inversion t=0 m=b k=kmutex irql=0",
    "",
    "*** Fatal System Error: 0x000000c4",
    "                       (0x0000000000001001,0xFFFFA00012345678,0x0000000000000000,0x0000000000000000)",
    "",
    "Driver at fault: wdk_mutex_tests.sys.",
]


def test_a_verifier_bugcheck_is_a_finding_of_the_scenario_that_was_running() -> None:
    verdict = judge_lines(INVERSION, VerdictConfig(), ["neg_lock_inversion"])
    (scenario,) = verdict.scenarios
    (crash,) = scenario.crashes
    assert crash.violation is not None and crash.violation.name == "lock_hierarchy_violation"
    assert "Driver Verifier, deadlock detection: lock-order violation (0x1001)" in crash.describe()


def test_under_verifier_the_inversion_passes_when_verifier_catches_it() -> None:
    judging = windows(verifier={}).judging
    verdict = judge_lines(INVERSION, judging, ["neg_lock_inversion"])
    assert verdict.scenarios[0].status == "passed", verdict.render()
    assert judge_lines(INVERSION, VerdictConfig(), ["neg_lock_inversion"]).scenarios[0].status != "passed"
    crash = windows(verifier={}).judging.expected_crashes["neg_wait_at_dispatch"]
    assert crash is not None and crash.accepts(Crash("kd", 0xC4, (0x121, 0, 0, 0)))
    assert crash.accepts(Crash("kd", 0xD1, (0, 2, 0, 0)))
