"""The probe against a scripted Windows guest: as documented, a German image, and a job object that kills.

The scripted guest replays the samples of tests/data/windows (SOURCES.md there says where each comes
from); it keeps state (services created, DbgViewCLI alive or not) so that a
check sees the consequences of its own commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import pytest
from scripted_windows import ScriptedWindows

from vmtest.cli import main
from vmtest.config.models import VmtestConfig
from vmtest.guests import Guest
from vmtest.probe import AssumptionsFailed, ensure_probed
from vmtest.probe import run as run_module
from vmtest.probe.context import ProbeContext, ProbeSettings
from vmtest.probe.model import Status
from vmtest.probe.report import ProbeReport
from vmtest.probe.run import _run_checks
from vmtest.probe.table import table_ids
from vmtest.probe.windows import WINDOWS_CHECKS
from vmtest.progress import PlainProgress

T = TypeVar("T")
DATA = Path(__file__).resolve().parents[1] / "data" / "windows"
DBGVIEW = r"C:\vmtest\tools\dbgviewcli.exe"


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


@dataclass
class ScriptedGuest(ScriptedWindows):
    """A Windows 11 guest as the samples describe it; ``german`` and ``job_kills`` pick the variant."""

    german: bool = False
    job_kills: bool = False
    kernel_debug: bool = False
    services: set[str] = field(default_factory=set)
    dbgview_alive: bool = True  # started by the capture; `start /b` under the session's job: gone

    def _de(self, english: str, german: str) -> bytes:
        return sample(german if self.german else english)

    def answer(self, argv: list[str]) -> tuple[int, bytes]:
        if argv[:2] == ["reg", "query"]:
            return self._registry(argv[2])
        if argv == ["ver"]:
            return 0, sample("ver.txt")
        if argv[0] == "sc.exe":
            return self._sc(argv[1], argv[2])
        if argv[:3] == ["cmd.exe", "/c", "copy"]:
            return 0, sample("copy_one_file.txt")
        if argv[:2] == ["cmd.exe", "/c"]:
            return 0, b""
        if argv[:2] == ["certutil", "-store"]:
            return 0, sample("certutil_store_root.txt" if argv[2] == "Root" else "certutil_store_empty.txt")
        if argv[:2] == ["pnputil", "/?"]:
            return 0, sample("pnputil_help.txt")
        if argv[:2] == ["where", "devgen"]:
            return 0, sample("where_devgen.txt")
        if argv[0] == "tasklist":
            alive = self.dbgview_alive and not self.job_kills
            return 0, sample("tasklist_csv_noheader_running.txt" if alive else "tasklist_no_match.txt")
        if argv[0] == "verifier":  # nothing verified: the settings' lines, then an empty driver list
            return (
                0,
                b"Special pool: Disabled\r\nForce IRQL checking: Disabled\r\n\r\nVerified drivers:\r\n\r\n",
            )
        if argv[:2] == ["bcdedit", "/enum"]:
            text = sample("bcdedit_enum_current_testsigning_yes.txt")
            if self.kernel_debug:  # `bcdedit /debug on` adds this element (windows11-vm.md §1.10)
                text = text.replace(
                    b"testsigning             Yes",
                    b"testsigning             Yes\r\ndebug                   Yes",
                )
            return 0, text
        raise AssertionError(f"the scripted guest does not know {' '.join(argv)!r}")

    def _registry(self, key: str) -> tuple[int, bytes]:
        if key.endswith(r"Nls\CodePage"):
            return 0, self._de("reg_query_oemcp_437.txt", "reg_query_oemcp_850.txt")
        if key.endswith(r"Nls\Language"):
            return 0, self._de("reg_language_0409.txt", "reg_language_0407.txt")
        if key.endswith("CurrentVersion"):
            return 0, sample("reg_currentversion.txt")
        if key.endswith("OpenSSH"):
            return 1, self._de("reg_query_not_found.txt", "reg_query_not_found_de.txt")
        if key.endswith(r"SecureBoot\State"):
            return 0, sample("reg_secureboot_off.txt")
        if key.endswith("Memory Management"):
            return 0, (DATA / "verifier" / "reg_memory_management_unset.txt").read_bytes()
        if key.endswith("Debug Print Filter"):
            return 0, sample("reg_debug_print_filter.txt")
        raise AssertionError(key)

    def _sc(self, verb: str, name: str) -> tuple[int, bytes]:
        if verb == "query":
            return 1060, self._de("sc_query_failed_1060.txt", "sc_query_failed_1060_de.txt")
        if verb == "create":
            self.services.add(name)
            return 0, self._de("sc_create_success.txt", "sc_create_success_de.txt")
        if verb == "start":
            return 193, self._de("sc_start_failed_193.txt", "sc_start_failed_193_de.txt")
        if verb == "delete":
            self.services.discard(name)
            return 0, self._de("sc_delete_success.txt", "sc_delete_success_de.txt")
        raise AssertionError(verb)


def probe(guest: ScriptedGuest, *, kd: bool = False) -> ProbeReport:
    settings = ProbeSettings(
        kd=kd,
        debugview_program="" if kd else DBGVIEW,
        debugview_pid=None if kd else 4242,
        debugview_watch=0.0,
    )
    context = ProbeContext(guest, "cmd", settings)
    return ProbeReport("windows11", "scripted", "key", tuple(_run_checks(context, WINDOWS_CHECKS)))


def statuses(report: ProbeReport) -> dict[str, Status]:
    return {item.check.id: item.status for item in report.observations}


def test_a_guest_as_documented_matches_every_assumption() -> None:
    guest = ScriptedGuest()
    report = probe(guest)
    assert set(statuses(report).values()) == {Status.AS_EXPECTED}, report.summary()
    assert not report.blocking
    assert "every assumption a run depends on holds" in report.summary()
    assert not guest.services, "the probe's service must be deleted again"
    assert not any("--stop" in command for command in guest.commands), (
        "the run's own DbgViewCLI is left alone"
    )


def test_a_german_image_is_handled_through_exit_statuses_and_its_code_page() -> None:
    report = probe(ScriptedGuest(german=True))
    seen = statuses(report)
    assert seen["code-page"] is Status.HANDLED
    assert seen["ui-language"] is Status.HANDLED
    assert seen["sc-missing-service"] is Status.HANDLED
    assert seen["sc-not-a-driver"] is Status.AS_EXPECTED  # the code is read from the exit status
    assert not report.blocking
    missing = next(item for item in report.observations if item.check.id == "sc-missing-service")
    assert "vmtest reads the exit status; nothing to do" in missing.advice
    # Decoded with code page 850, the German text is right (ä is 0x84 there, not in UTF-8).
    started = next(item for item in report.observations if item.check.id == "sc-not-a-driver")
    texts = "".join(raw.output for raw in started.raw)
    assert "zulässige Win32-Anwendung" in texts
    assert {raw.encoding for raw in started.raw} == {"cp850"}


def test_a_capture_killed_with_its_session_is_named_and_blocks_the_run() -> None:
    report = probe(ScriptedGuest(job_kills=True))
    assert [item.check.id for item in report.blocking] == ["debugview-survives"]
    (item,) = report.blocking
    assert item.status is Status.DIFFERS
    assert "use the kernel debugger" in item.advice.lower()
    assert "debugview-survives" in report.summary()


def test_with_kernel_debugging_debugview_is_not_probed() -> None:
    report = probe(ScriptedGuest(job_kills=True, kernel_debug=True), kd=True)
    assert statuses(report)["debugview-survives"] is Status.NOT_RUN
    assert not report.blocking


def test_kernel_debugging_off_in_the_image_blocks_a_kd_run() -> None:
    report = probe(ScriptedGuest(), kd=True)
    assert [item.check.id for item in report.blocking] == ["bcdedit"]
    assert "guest.kd: false" in report.blocking[0].advice


def test_the_report_files_hold_every_raw_output(tmp_path: Path) -> None:
    report = probe(ScriptedGuest(german=True, job_kills=True))
    json_path, markdown_path = report.write(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["blocking"] == ["debugview-survives"]
    by_id = {item["id"]: item for item in data["observations"]}
    assert by_id["sc-missing-service"]["raw"][0]["exit_code"] == 1060
    assert "FEHLER 1060" in by_id["sc-missing-service"]["raw"][0]["output"]
    assert all(item["rows"] for item in data["observations"]), "every check names its behaviour rows"
    markdown = markdown_path.read_text()
    assert re.search(r"\| sc-missing-service \| ok\* \|", markdown)
    assert "FEHLER 1060" in markdown


class StandInSession:
    """What ensure_probed uses of a VmSession, for a Windows guest that cannot boot here."""

    def __init__(self, tmp_path: Path, guest: ScriptedGuest, image: Path) -> None:
        self.config = VmtestConfig.model_validate(
            {
                "guest": {
                    "kind": "windows11",
                    "password": "pw",
                    "kd": False,
                    "debugview": {"start_command": ["cmd.exe", "/c", "start", "", "/b"]},
                },
                "artifacts": tmp_path / "art",
            }
        )
        self.guest = Guest(guest, drivers=None)  # type: ignore[arg-type]
        self.run_dir = SimpleNamespace(path=tmp_path / "run")
        self.run_dir.path.mkdir()
        self.machine = SimpleNamespace(
            accel="kvm", profile=SimpleNamespace(image=SimpleNamespace(root=image))
        )
        self.sources: list[object] = []
        self.progress = PlainProgress(io.StringIO())

    @contextlib.contextmanager
    def step(self, phase: str, description: str) -> Iterator[None]:
        yield

    async def call(self, function: Callable[..., T], *args: object, timeout: float, what: str) -> T:
        return await asyncio.to_thread(function, *args)  # as VmSession.call: in a worker thread


@pytest.fixture
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMTEST_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "image"
    root.mkdir()
    (root / "image.json").write_text('{"kind": "windows11", "built": "today"}')
    return root


def fast_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    original = run_module._settings

    def settings(session: object) -> object:
        found, checks = original(session)  # type: ignore[arg-type]
        return dataclasses.replace(found, debugview_watch=0.0), checks

    monkeypatch.setattr(run_module, "_settings", settings)


def test_a_run_stops_before_its_scenarios_when_the_guest_breaks_an_assumption(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_watch(monkeypatch)
    session = StandInSession(tmp_path, ScriptedGuest(job_kills=True), image)
    with pytest.raises(AssumptionsFailed) as raised:
        asyncio.run(ensure_probed(session, session.guest))  # type: ignore[arg-type]
    assert raised.value.exit_code == 2
    assert raised.value.phase == "probe"
    assert "debugview-survives" in str(raised.value)
    assert str(session.run_dir.path / "probe" / "probe.md") in str(raised.value)
    assert json.loads((session.run_dir.path / "probe" / "probe.json").read_text())["blocking"]
    assert not list((tmp_path / "cache").glob("probe/*.json")), "a failed probe is not remembered"


def test_an_image_is_probed_once(tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_watch(monkeypatch)
    first = (
        StandInSession(tmp_path / "1", ScriptedGuest(), image) if (tmp_path / "1").mkdir() is None else None
    )
    assert first is not None
    report = asyncio.run(ensure_probed(first, first.guest))  # type: ignore[arg-type]
    assert report is not None and not report.blocking
    assert len(list((tmp_path / "cache").glob("probe/*.json"))) == 1
    (tmp_path / "2").mkdir()
    again = ScriptedGuest()
    second = StandInSession(tmp_path / "2", again, image)
    assert asyncio.run(ensure_probed(second, second.guest)) is None  # type: ignore[arg-type]
    assert again.commands == [], "a probed image is not probed again"
    (image / "image.json").write_text('{"kind": "windows11", "built": "tomorrow"}')  # a new image
    third_guest = ScriptedGuest()
    (tmp_path / "3").mkdir()
    third = StandInSession(tmp_path / "3", third_guest, image)
    assert asyncio.run(ensure_probed(third, third.guest)) is not None  # type: ignore[arg-type]
    assert third_guest.commands


def test_every_row_the_probe_names_is_in_the_behaviour_table() -> None:
    table = (Path(__file__).resolve().parents[2] / "docs" / "WINDOWS.md").read_text()
    named = {row for check, _ in WINDOWS_CHECKS for row in check.rows} | {
        row for check in (run_module.KD_LINK, run_module.HV_CRASH) for row in check.rows
    }
    assert named - table_ids(table) == set()


def test_the_seen_column_is_filled_from_a_report_only(tmp_path: Path) -> None:
    table_path = tmp_path / "WINDOWS.md"
    table_path.write_text((Path(__file__).resolve().parents[2] / "docs" / "WINDOWS.md").read_text())
    report = probe(ScriptedGuest(german=True, job_kills=True))
    report_path = tmp_path / "probe.json"
    report_path.write_text(json.dumps(report.to_dict()))
    assert main(["probe", "--record", str(report_path), "--table", str(table_path)]) == 0
    rows = {
        line.split(" | ")[0][2:]: line
        for line in table_path.read_text().splitlines()
        if line.startswith("| W-")
    }
    assert rows["W-SC-1060"].endswith("| yes |")  # German, handled: the behaviour was seen
    assert rows["W-SSH-JOB"].endswith("| differs: dbgviewcli.exe not running |")
    assert rows["W-PSEXEC"].endswith("| no |")  # nothing in the report says anything about it
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"observations": [{"status": "as-expected", "rows": ["W-NO-SUCH-ROW"]}]}))
    assert main(["probe", "--record", str(bad), "--table", str(table_path)]) == 2
