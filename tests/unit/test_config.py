"""Configuration loading: every problem at once, located by file:line:column, secrets never shown."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from vmtest.config import VmtestConfig, load_config
from vmtest.errors import ConfigError

CANARY = "canary-Zq8vX2-not-for-printing"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vmtest.yaml"
    path.write_text(text)
    return path


def problems(path: Path, monkeypatch: pytest.MonkeyPatch | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


def test_every_problem_is_reported_at_once_with_its_position(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "guest:\n  ssh:\n    bogus: 1\nmachine:\n  cpus: two\n  accel: kvmm\ntimeouts:\n  boot: -5\n",
    )
    found = problems(path)
    assert found == [
        f"{path}:3:5: guest.ssh.bogus: unknown setting",
        f"{path}:5:9: machine.cpus: Input should be a valid integer, unable to parse string as an integer",
        f"{path}:6:10: machine.accel: Input should be 'auto', 'kvm' or 'tcg'",
        f"{path}:8:9: timeouts.boot: Input should be greater than 0",
    ]


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "machine:\n  cpus: 1\n  memory_mib: 512\n  cpus: 2\n")
    assert problems(path) == [f"{path}:4:3: machine.cpus: duplicate key (first defined at line 2, column 3)"]


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "machine: [1, 2\n")
    (found,) = problems(path)
    assert found.startswith(f"{path}:2:1: invalid YAML:")


def test_yaml_11_booleans_are_not_silently_converted(tmp_path: Path) -> None:
    path = write(tmp_path, "machine:\n  accel: on\n")
    assert problems(path) == [f"{path}:2:10: machine.accel: Input should be 'auto', 'kvm' or 'tcg'"]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert problems(path) == [f"{path}:1:1: the file must be a mapping of settings"]


def test_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found"]


def test_unset_environment_variable_is_named_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMTEST_TEST_UNSET", raising=False)
    path = write(tmp_path, "timeouts:\n  boot: ${VMTEST_TEST_UNSET}\n")
    assert problems(path) == [f"{path}:2:9: timeouts.boot: environment variable VMTEST_TEST_UNSET is not set"]


def every_model(model: BaseModel) -> Iterator[BaseModel]:
    """``model`` and every configuration model inside it."""
    yield model
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from every_model(value)


def test_secret_from_environment_is_loaded_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMTEST_TEST_PASSWORD", CANARY)
    path = write(
        tmp_path,
        "guest:\n  ssh:\n    password: ${VMTEST_TEST_PASSWORD}\n    user: u-${VMTEST_TEST_PASSWORD}\n"
        "machine:\n  extra_args: ['-name', 'n-${VMTEST_TEST_PASSWORD}']\n"
        "driver:\n  parameters:\n    token: ${VMTEST_TEST_PASSWORD}\n",
    )
    config = load_config(path)
    assert config.guest.ssh.password is not None
    assert config.guest.ssh.password.get_secret_value() == CANARY
    assert config.guest.ssh.user == f"u-{CANARY}" and config.driver.parameters["token"] == CANARY
    shown = {
        f"{kind}({type(model).__name__})": text
        for model in every_model(config)
        for kind, text in (("repr", repr(model)), ("str", str(model)))
    }
    shown["redacted()"] = json.dumps(config.redacted())
    assert [where for where, text in shown.items() if CANARY in text] == []
    assert "user='<redacted>'" in repr(config.guest.ssh)
    redacted = config.redacted()
    assert redacted["guest"]["ssh"]["password"] == "<redacted>"
    assert redacted["guest"]["ssh"]["user"] == "<redacted>"
    assert redacted["machine"]["extra_args"] == ["-name", "<redacted>"]
    assert redacted["driver"]["parameters"]["token"] == "<redacted>"


def test_invalid_secret_value_is_not_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMTEST_TEST_PASSWORD", CANARY)
    path = write(tmp_path, "machine:\n  cpus: ${VMTEST_TEST_PASSWORD}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert CANARY not in str(caught.value)


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "artifacts: out\nguest:\n  image: img\n")
    config = load_config(path)
    assert config.artifacts == tmp_path / "out"
    assert config.guest.image == tmp_path / "img"


def test_no_file_means_the_linux_self_test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config == VmtestConfig()
    assert config.guest.kind == "linux"
    assert config.machine.accel == "auto"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMTEST_WINDOWS_PASSWORD", CANARY)  # the Windows example reads it from the environment
    config = load_config(example)
    assert config.guest.kind == example.stem.split("-")[0]
    assert CANARY not in str(config.redacted())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmtest.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, "machine:\n  cpus: 1\n")
    assert run_cli("validate", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("machine:\n  cpus: 0\n")
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert f"{bad}:2:9: machine.cpus: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr
