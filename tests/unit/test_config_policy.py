"""The runner's policy refuses configuration keys that run host programs (issue 16 point 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtest.config import load_config
from vmtest.config.policy import allowed_host_program_keys
from vmtest.errors import ConfigError


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vmtest.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_on_github_actions_without_a_policy_host_programs_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("VMTEST_POLICY", str(tmp_path / "absent.yaml"))
    path = config_file(tmp_path, "machine:\n  qemu: /tmp/evil\n  extra_args: [-plugin, x]\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = str(raised.value)
    assert "machine.qemu" in text and "machine.extra_args" in text and "policy" in text
    assert load_config(config_file(tmp_path, "machine:\n  cpus: 2\n")).machine.cpus == 2


def test_the_runners_policy_file_allows_what_it_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("allow_host_program_keys: [machine.qemu]\n", encoding="utf-8")
    monkeypatch.setenv("VMTEST_POLICY", str(policy))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert load_config(config_file(tmp_path, "machine:\n  qemu: qemu-system-x86_64\n")).machine.qemu
    with pytest.raises(ConfigError, match=r"machine\.extra_args"):
        load_config(config_file(tmp_path, "machine:\n  extra_args: [-S]\n"))
    monkeypatch.delenv("GITHUB_ACTIONS")
    with pytest.raises(ConfigError, match=r"machine\.extra_args"):
        load_config(config_file(tmp_path, "machine:\n  extra_args: [-S]\n"))  # the file decides, CI or not


def test_a_developer_machine_without_a_policy_is_unchanged(tmp_path: Path) -> None:
    environ = {"VMTEST_POLICY": str(tmp_path / "absent.yaml")}
    assert allowed_host_program_keys(environ) == {"machine.qemu", "machine.extra_args"}


def test_a_bad_policy_is_an_error_not_a_pass(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("allow_host_program_keys: [machine.everything]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="allow_host_program_keys"):
        allowed_host_program_keys({"VMTEST_POLICY": str(policy)})
