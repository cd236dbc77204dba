"""The runner's policy: which configuration keys that run host programs a configuration may set.

A driver repository's configuration comes with its pull requests. On a self-hosted CI runner, keys that
make vmtest start a program of the configuration's choosing on the host (``machine.qemu``, the QEMU
binary; ``machine.extra_args``, arguments QEMU runs with, which can name host files and helpers) would
let a pull request run code on the runner. They are refused unless the runner's own policy file, which
the pull request cannot touch, allows them.

The policy file is ``$VMTEST_POLICY``, else ``/etc/vmtest/policy.yaml`` (``ci/runner/setup.sh`` writes
it, root-owned)::

    allow_host_program_keys: []          # or [machine.qemu, machine.extra_args]

Where no policy file exists, the keys are refused on GitHub Actions (``GITHUB_ACTIONS=true``, set by
the runner for every step: docs.github.com, "Store information in variables", *Default environment
variables*) and allowed elsewhere, so a developer's machine is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from vmtest.config.models import VmtestConfig
from vmtest.errors import ConfigError, ConfigProblem

__all__ = ["HOST_PROGRAM_KEYS", "POLICY_PATH", "allowed_host_program_keys", "check_policy"]

HOST_PROGRAM_KEYS = ("machine.qemu", "machine.extra_args")
POLICY_PATH = Path("/etc/vmtest/policy.yaml")


def allowed_host_program_keys(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The host-program keys this host allows a configuration to set."""
    env = os.environ if environ is None else environ
    path = Path(env["VMTEST_POLICY"]) if env.get("VMTEST_POLICY") else POLICY_PATH
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return frozenset() if env.get("GITHUB_ACTIONS") == "true" else frozenset(HOST_PROGRAM_KEYS)
    except (OSError, yaml.YAMLError) as error:
        problem = ConfigProblem(str(path), None, None, "", f"cannot read the runner's policy: {error}")
        raise ConfigError([problem]) from None
    allowed = document.get("allow_host_program_keys", []) if isinstance(document, dict) else None
    if not isinstance(allowed, list) or not set(map(str, allowed)) <= set(HOST_PROGRAM_KEYS):
        message = f"allow_host_program_keys must be a list of {', '.join(HOST_PROGRAM_KEYS)}"
        raise ConfigError([ConfigProblem(str(path), None, None, "allow_host_program_keys", message)])
    return frozenset(map(str, allowed))


def check_policy(config: VmtestConfig, source: str, environ: Mapping[str, str] | None = None) -> None:
    """ConfigError naming each host-program key ``config`` sets that the policy does not allow."""
    allowed = allowed_host_program_keys(environ)
    explicit = {f"machine.{name}" for name in config.machine.model_fields_set}
    refused = [key for key in HOST_PROGRAM_KEYS if key in explicit and key not in allowed]
    if refused:
        message = "runs a program on the host: refused by this runner's policy (allow_host_program_keys)"
        raise ConfigError([ConfigProblem(source, None, None, key, message) for key in refused])
