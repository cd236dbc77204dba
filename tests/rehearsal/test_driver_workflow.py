"""The reusable workflow's Linux-side jobs, run here as GitHub would run them, against real VMs.

``actions_runner.Runner`` reads ``.github/workflows/vmtest-driver.yml``, evaluates its expressions and
runs each ``run:`` step with bash; the VM jobs run the real ``vmtest run`` on the Linux self-test guest.
Two things are stood in for: the Windows build job (its result is given, and its artifact is the Linux
driver package, drivers/linux-mutex-tests), and installing vmtest (this checkout's virtualenv is put on
PATH). VM runs are kept few: two scenarios over two shards, one failing pair on one shard (run again
as "Re-run failed jobs" does), and one boot that times out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from actions_runner import Artifacts, JobRun, Runner, _commands, evaluate

from vmtest.images.linux import build_linux_image, default_cache_root

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "vmtest-driver.yml"
LINUX_DRIVER = ROOT / "drivers" / "linux-mutex-tests"
BUDGET_MIB = 50
FORBIDDEN_SUFFIXES = (".qcow2", ".fd", ".sock")


@pytest.fixture(scope="module", autouse=True)
def image() -> None:
    build_linux_image()


def runner(tmp_path: Path, *, event: str = "pull_request", fork: bool = False, **inputs: object) -> Runner:
    """A workflow call as the example caller makes it, on a pull request of the same repository."""
    caller = tmp_path / "caller"
    (caller / "vmtest").mkdir(parents=True)
    for name, text in {
        "linux.yaml": "guest:\n  kind: linux\n",
        "slow-boot.yaml": "guest:\n  kind: linux\ntimeouts:\n  boot: 1\n",
        # neg_wait_at_dispatch panics the guest; not marked as an expected crash, it fails.
        "crash-fails.yaml": "verdict:\n  expected_crashes:\n    neg_wait_at_dispatch: null\n",
        "windows11.yaml": "guest:\n  kind: windows11\n  password: ${VMTEST_WINDOWS_PASSWORD}\n",
    }.items():
        (caller / "vmtest" / name).write_text(text, encoding="utf-8")
    vmtest_src = tmp_path / "vmtest-src"
    vmtest_src.mkdir()
    (vmtest_src / "README.md").write_text("vmtest at the called tag (installed by the stand-in)\n")
    head = "someone/driver-fork" if fork else "owner/driver"
    github = {
        "event_name": event,
        "ref": "refs/pull/7/merge",
        "workflow": "driver tests",
        "repository": "owner/driver",
        "event": {"pull_request": {"head": {"repo": {"full_name": head}}}},
    }
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_", "VMTEST_"))}
    defaults: dict[str, object] = {
        "vmtest-repository": "owner/vmtest",
        "vmtest-ref": "v0.2.0",
        "vmtest-cache": str(default_cache_root()),
        "vmtest-config": "vmtest/linux.yaml",
        "artifact-budget-mib": BUDGET_MIB,
    }
    secrets = dict(inputs.pop("secrets", {}))  # type: ignore[call-overload]
    return Runner(
        workflow=WORKFLOW,
        root=tmp_path / "run",
        inputs={**defaults, **inputs},
        secrets=secrets,
        github=github,
        checkouts={"": caller, "owner/vmtest": vmtest_src},
        install_vmtest=Path(sys.executable).parent,
        base_env=base_env,
    )


def fake_build(run: Runner, result: str = "success") -> dict[str, str]:
    """The Windows build job's place: its result, and on success its artifact (the Linux driver package)."""
    if result == "success":
        assert not run.artifacts.upload(
            "vmtest-driver-package", [LINUX_DRIVER], overwrite=True, if_no_files="error"
        )
    return {"build-driver": result}


def merged_cases(run: Runner) -> list[str]:
    report = run.artifacts.path("vmtest-report") / "junit.xml"
    return sorted(str(case.get("name")) for case in ET.parse(report).getroot().iter("testcase"))


def final_check(jobs: dict[str, list[JobRun]]) -> JobRun:
    (report,) = jobs["report"]
    return report


def uploaded_files(run: Runner, prefix: str) -> list[Path]:
    return [
        f
        for name in run.artifacts.names()
        if name.startswith(prefix)
        for f in run.artifacts.path(name).rglob("*")
        if f.is_file()
    ]


def assert_nothing_secret_or_heavy_uploaded(run: Runner) -> None:
    files = uploaded_files(run, "vmtest-artifacts-shard-")
    assert files, "the VM job uploaded its logs"
    assert not [f for f in files if f.name.endswith(FORBIDDEN_SUFFIXES) or "tpm" in f.name.lower()]
    for name in run.artifacts.names():
        if name.startswith("vmtest-artifacts-shard-"):
            size = sum(f.stat().st_size for f in run.artifacts.path(name).rglob("*") if f.is_file())
            assert size <= BUDGET_MIB * 1024 * 1024


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Runner, dict[str, list[JobRun]], Path]:
    """One real run of two shards (two VMs); the cases that only need the report side reuse its results."""
    tmp_path = tmp_path_factory.mktemp("two-shards")
    run = runner(tmp_path, shards=2, scenarios="kmutex_contention irql_errors")
    return run, run.run(fake_build(run)), tmp_path


def test_two_shards_run_every_scenario_and_pass_the_check(
    two_shards: tuple[Runner, dict[str, list[JobRun]], Path],
) -> None:
    run, jobs, tmp_path = two_shards
    assert [j.result for j in jobs["vm-test"]] == ["success", "success"], [
        j.log[-3000:] for j in jobs["vm-test"]
    ]
    report = final_check(jobs)
    assert report.result == "success", report.log
    assert merged_cases(run) == ["irql_errors", "kmutex_contention"]
    assert set(run.artifacts.names()) == {
        "vmtest-driver-package",
        "vmtest-artifacts-shard-1",
        "vmtest-artifacts-shard-2",
        "vmtest-results-shard-1",
        "vmtest-results-shard-2",
        "vmtest-report",
    }
    assert_nothing_secret_or_heavy_uploaded(run)
    shard = jobs["vm-test"][0]
    assert "vmtest-artifacts-shard-1" in shard.summary and "actions/runs/4242" in shard.summary
    assert str(tmp_path) not in shard.summary, "the summary names the artifact, not a path on the runner"
    assert not [a for a in shard.annotations if a.startswith("::error")]
    assert "::stop-commands::" in shard.log, "guest output is printed while workflow commands are stopped"


def reuse_results(source: Runner, target: Runner, shards: list[int]) -> None:
    for shard in shards:
        name = f"vmtest-results-shard-{shard}"
        shutil.copytree(source.artifacts.path(name), target.artifacts.path(name))


def test_the_report_merges_real_shard_results(
    two_shards: tuple[Runner, dict[str, list[JobRun]], Path], tmp_path: Path
) -> None:
    """The report side alone, on the two real shards' results: both artifacts land side by side."""
    run = runner(tmp_path, shards=2)
    reuse_results(two_shards[0], run, [1, 2])
    jobs = run.run({"build-driver": "success", "vm-test": "success"})
    assert final_check(jobs).result == "success", final_check(jobs).log
    assert merged_cases(run) == ["irql_errors", "kmutex_contention"]


def test_a_shard_that_left_no_results_fails_the_report(
    two_shards: tuple[Runner, dict[str, list[JobRun]], Path], tmp_path: Path
) -> None:
    """A shard that died before uploading (a runner lost mid-job) is named; the rest is still merged."""
    run = runner(tmp_path, shards=2)
    reuse_results(two_shards[0], run, [1])
    jobs = run.run({"build-driver": "success", "vm-test": "failure"})
    report = final_check(jobs)
    assert report.result == "failure"
    assert any("shard(s) 2 left no results" in a for a in report.annotations), report.annotations
    assert len(merged_cases(run)) == 1


def test_one_shard_with_a_failing_scenario_then_re_run(tmp_path: Path) -> None:
    """shards: 1 (a lone results artifact is extracted without its folder), a failure, and a re-run."""
    scenarios = "kmutex_contention neg_wait_at_dispatch"
    run = runner(tmp_path, shards=1, scenarios=scenarios, **{"vmtest-config": "vmtest/crash-fails.yaml"})
    jobs = run.run(fake_build(run))
    (shard,) = jobs["vm-test"]
    assert (
        shard.result == "failure"
        and shard.steps["Upload the artifacts (logs, screenshots, reports)"] == "success"
    )
    assert any("neg_wait_at_dispatch" in a for a in shard.annotations), shard.annotations
    assert final_check(jobs).result == "failure"
    assert merged_cases(run) == ["kmutex_contention", "neg_wait_at_dispatch"], (
        "the merged report is not empty"
    )

    again = run.rerun(["vm-test", "report"], jobs)
    (shard,) = again["vm-test"]
    uploads = {name: outcome for name, outcome in shard.steps.items() if name.startswith("Upload")}
    assert set(uploads.values()) == {"success"}, "a re-run uploads over its own earlier attempt"
    assert final_check(again).result == "failure"
    assert merged_cases(run) == ["kmutex_contention", "neg_wait_at_dispatch"]
    assert_nothing_secret_or_heavy_uploaded(run)
    # The stand-in refuses what upload-artifact refuses: the same name again without overwrite.
    error = run.artifacts.upload("vmtest-report", [tmp_path / "caller"], overwrite=False, if_no_files="warn")
    assert "already exists" in error


def test_an_infrastructure_failure_is_named_and_fails_the_check(tmp_path: Path) -> None:
    run = runner(
        tmp_path, shards=1, scenarios="kmutex_contention", **{"vmtest-config": "vmtest/slow-boot.yaml"}
    )
    jobs = run.run(fake_build(run))
    (shard,) = jobs["vm-test"]
    assert shard.result == "failure"
    assert any("infrastructure failure" in a for a in shard.annotations), shard.annotations
    assert "exit-code=3" in shard.log or shard.steps["Run the driver tests in the VM"] == "failure"
    report = final_check(jobs)
    assert report.result == "failure"
    assert "vmtest-artifacts-shard-1" in run.artifacts.names(), "the logs of a failed boot are uploaded"


def test_a_failed_build_fails_the_required_check_instead_of_skipping_it(tmp_path: Path) -> None:
    run = runner(tmp_path, shards=2)
    jobs = run.run(fake_build(run, "failure"))
    assert [j.result for j in jobs["vm-test"]] == ["skipped"]
    report = final_check(jobs)
    assert report.result == "failure", "a skipped required job would count as passing"
    assert any("build: failure" in a for a in report.annotations), report.annotations


def test_a_fork_pull_request_is_not_run_on_the_runner_and_says_so(tmp_path: Path) -> None:
    run = runner(tmp_path, fork=True)
    jobs = run.run(fake_build(run))
    assert [j.result for j in jobs["vm-test"]] == ["skipped"]
    report = final_check(jobs)
    assert report.result == "failure" and any("forks" in a for a in report.annotations)


def test_a_missing_password_secret_is_named_before_anything_runs(tmp_path: Path) -> None:
    run = runner(tmp_path, **{"vmtest-config": "vmtest/windows11.yaml"})
    jobs = run.run(fake_build(run))
    (shard,) = jobs["vm-test"]
    assert shard.steps["Check the guest password is passed"] == "failure"
    assert shard.steps["Check the runner (vmtest doctor)"] == "skipped"
    assert any("windows-password" in a for a in shard.annotations), shard.annotations
    assert final_check(jobs).result == "failure"


def test_the_password_secret_reaches_the_vm_job(tmp_path: Path) -> None:
    """With the secret passed, the check passes (doctor then fails: no Windows image here)."""
    run = runner(
        tmp_path, secrets={"windows-password": "s3cret-Pa55"}, **{"vmtest-config": "vmtest/windows11.yaml"}
    )
    jobs = run.run(
        fake_build(run),
    )
    (shard,) = jobs["vm-test"]
    assert shard.steps["Check the guest password is passed"] == "success"
    assert "s3cret-Pa55" not in shard.log


# --- The stand-in itself --------------------------------------------------------------------------------


def test_download_extracts_a_lone_artifact_without_its_folder(tmp_path: Path) -> None:
    store = Artifacts(tmp_path / "store")
    (tmp_path / "a" / "shard-1").mkdir(parents=True)
    (tmp_path / "a" / "shard-1" / "junit.xml").write_text("<x/>")
    assert not store.upload("results-1", [tmp_path / "a"], overwrite=False, if_no_files="warn")
    store.download(tmp_path / "one", name=None, pattern="results-*", merge=False)
    assert (tmp_path / "one" / "shard-1" / "junit.xml").is_file()
    assert not store.upload("results-2", [tmp_path / "a"], overwrite=False, if_no_files="warn")
    store.download(tmp_path / "two", name=None, pattern="results-*", merge=False)
    assert (tmp_path / "two" / "results-1" / "shard-1" / "junit.xml").is_file()


def test_commands_are_not_read_between_stop_commands_and_its_token() -> None:
    out = "::error::real\n::stop-commands::abc123\n::error::forged by the guest\n::abc123::\n::error::after\n"
    assert _commands(out) == ["::error::real", "::error::after"]


def test_expressions() -> None:
    context = {
        "needs": {"vm-test": {"result": "skipped"}},
        "inputs": {"shards": 2, "runner-labels": '["a", "b"]'},
    }
    assert evaluate("needs.vm-test.result != 'skipped'", context) is False
    assert evaluate("!cancelled() && inputs.shards == '2'", context) is True
    assert evaluate("join(fromJSON(inputs.runner-labels), '+')", context) == "a+b"
    assert shutil.which("bash")


def test_the_upload_selection_leaves_out_disks_firmware_tpm_state_and_what_exceeds_the_budget(
    tmp_path: Path,
) -> None:
    """The VM job's selection step, run as it is in the workflow, on a run folder holding everything."""
    document = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    (step,) = [
        s for s in document["jobs"]["vm-test"]["steps"] if s.get("name") == "Select the artifacts to upload"
    ]
    run_dir = tmp_path / "out" / "artifacts" / "vmtest-run-1"
    (run_dir / "tpm").mkdir(parents=True)
    files = {
        "disk0.qcow2": 4096,
        "efivars.fd": 4096,
        "tpm/tpm2-00.permall": 100,
        "capture.log": 1000,
        "report.html": 2000,
        "serial-console.log": 3 * 1024 * 1024,  # over the 1 MiB budget below
    }
    for name, size in files.items():
        (run_dir / name).write_bytes(b"x" * size)
    env = {**os.environ, "VMTEST_OUT": str(tmp_path / "out"), "BUDGET_MIB": "1", "SHARD": "3"}
    script = tmp_path / "select.sh"
    script.write_text(step["run"], encoding="utf-8")
    result = subprocess.run(["bash", "-eo", "pipefail", str(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    uploaded = tmp_path / "out" / "upload" / "shard-3" / "vmtest-run-1"
    assert sorted(p.name for p in uploaded.rglob("*") if p.is_file()) == ["capture.log", "report.html"]
    left_out = (tmp_path / "out" / "upload" / "shard-3" / "LEFT-OUT.txt").read_text()
    assert "serial-console.log" in left_out and "over the 1 MiB budget" in result.stdout
