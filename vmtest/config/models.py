"""The typed configuration: what a ``vmtest.yaml`` may contain, its defaults and its limits.

Every model forbids unknown keys. Relative paths are resolved against the configuration file's
directory. Values pulled from the environment with ``${NAME}`` are remembered so that the resolved
configuration written to a run directory, and the repr and str of every model, never contain them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationInfo,
    model_validator,
)

from vmtest.config.verifier import VerifierConfig
from vmtest.verdict.config import VerdictConfig

__all__ = [
    "Accelerator",
    "DriverConfig",
    "GuestConfig",
    "LinuxGuestConfig",
    "MachineConfig",
    "MachineLimits",
    "SshConfig",
    "SuiteConfig",
    "SuiteMode",
    "Timeouts",
    "VmtestConfig",
]

Accelerator = Literal["auto", "kvm", "tcg"]
SuiteMode = Literal["protocol", "text", "smoke"]
"""How a run is judged: vmtest's event protocol, the driver's own pass/fail lines, or a smoke test."""
REDACTED = "<redacted>"


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    if "\0" in str(value):
        raise ValueError("a path cannot contain a NUL character")
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Fields whose value came (wholly or in part) from the environment: shown as <redacted> by repr and str.
    _hidden: frozenset[str] = PrivateAttr(default=frozenset())

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, REDACTED if name in self._hidden else value


class MachineLimits(_Strict):
    """Bounds on one QEMU process, so that one run cannot starve the host (docs/SECURITY.md)."""

    memory_overhead_mib: int = Field(
        4096, ge=512, description="address space QEMU may use beyond the guest's memory (RLIMIT_AS)"
    )
    cpu_seconds: int = Field(7200, ge=10, description="CPU time QEMU may use (RLIMIT_CPU)")
    disk_mib: int = Field(
        8192, ge=16, description="largest file QEMU may write: each overlay, log, screenshot (RLIMIT_FSIZE)"
    )


class MachineConfig(_Strict):
    """The virtual hardware and the QEMU binary that runs it."""

    qemu: str = Field("qemu-system-x86_64", min_length=1, description="QEMU binary, by name or path")
    accel: Accelerator = Field(
        "auto", description="auto probes KVM with a tiny guest and falls back to TCG when KVM cannot run one"
    )
    cpus: int = Field(2, ge=1, le=64)
    memory_mib: int = Field(1024, ge=128, le=1024 * 1024)
    extra_args: tuple[str, ...] = Field((), description="appended to the QEMU command line as they are")
    warm: bool = Field(
        False,
        description="start from a RAM snapshot of the ready guest, kept per image and configuration in the "
        "cache (made by the first cold boot); between tests the guest returns to it",
    )
    sandbox: bool = Field(
        True,
        description="run QEMU under its seccomp filter (-sandbox on, spawning and privilege changes denied); "
        "turning it off is reported as a warning",
    )
    user: str = Field(
        "vmtest",
        min_length=1,
        description="when vmtest runs as root, QEMU and swtpm run as this user (nobody if it does not exist)",
    )
    limits: MachineLimits = Field(default_factory=MachineLimits)
    warm_store: ConfigPath | None = Field(
        None,
        description="where warm snapshots are kept (each holds a file as large as the guest's memory): a "
        "filesystem with room for it, such as /dev/shm or a local disk; default: <cache>/warm",
    )
    clean_shutdown: bool = Field(
        False,
        description="power the guest off through ACPI at the end of a run instead of ending QEMU at once "
        "(its disk is a throwaway overlay, so nothing is lost without it)",
    )


class Timeouts(_Strict):
    """Deadlines, in seconds. Every wait in vmtest has one."""

    boot: float = Field(180.0, gt=0, description="QEMU start until the guest is ready")
    qmp_command: float = Field(15.0, gt=0, description="one QMP command")
    shutdown: float = Field(30.0, gt=0, description="the whole shutdown ladder")
    accel_probe: float = Field(8.0, gt=0, description="the KVM probe guest")
    scenarios: float = Field(300.0, gt=0, description="loading the driver until every scenario has ended")
    command: float = Field(120.0, gt=0, description="one command or file copy in the guest")


class SshConfig(_Strict):
    """How vmtest logs into the guest over SSH (through a port forwarded on 127.0.0.1)."""

    user: str = Field("root", min_length=1)
    guest_port: int = Field(22, ge=1, le=65535)
    key: ConfigPath | None = Field(None, description="private key; default: the image's client key")
    password: SecretStr | None = Field(None, description="use ${NAME} to read it from the environment")
    host_key: str | None = Field(
        None, description="pinned public key line ('ssh-ed25519 AAAA...'); default: the image's host key"
    )
    insecure_accept_any_host_key: bool = Field(
        False, description="trust whatever key the guest presents: only for throwaway VMs"
    )


class LinuxGuestConfig(_Strict):
    """A Linux guest booted from a kernel and an initramfs: the self-test guest built by vmtest."""

    kind: Literal["linux"] = "linux"
    image: ConfigPath | None = Field(
        None, description="a directory made by `vmtest image build linux`; default: the newest one built"
    )
    append: str = Field("", description="extra kernel command-line arguments")
    ssh: SshConfig = SshConfig()


# The Windows guest's settings live in their own module, which builds on the pieces above.
from vmtest.config.windows import Windows11GuestConfig  # noqa: E402


def _guest_kind(value: Any) -> str:
    """The ``kind`` of a guest section; a section without one is the Linux self-test guest."""
    if isinstance(value, dict):
        return str(value.get("kind", "linux"))
    return str(getattr(value, "kind", "linux"))


GuestConfig = Annotated[
    Annotated[LinuxGuestConfig, Tag("linux")] | Annotated[Windows11GuestConfig, Tag("windows11")],
    Discriminator(_guest_kind),
]
"""A guest of either kind, chosen by its ``kind`` (default ``linux``)."""


class DriverConfig(_Strict):
    """The driver under test."""

    package: ConfigPath | None = Field(
        None,
        description="a driver package folder (.sys/.inf/.cat/.cer), a .ko, or a Kbuild source folder built "
        "against the guest's headers; default: the wdk-mutex test driver for the guest kind",
    )
    parameters: dict[str, str | int] = Field(
        default_factory=dict,
        description="driver parameters (registry values / module parameters): in protocol mode added to the "
        "scenario parameters; in text and smoke modes the only ones passed",
    )
    expect_entry_failure: bool = Field(
        False,
        description="the entry point (DriverEntry, a module's init) fails by design after printing its "
        "results: its failure is a note, not a load error, the verdict comes from the output, and there is "
        "nothing to unload",
    )
    verifier: VerifierConfig | None = Field(
        None, description="run the driver under Windows Driver Verifier (Windows guests; off by default)"
    )


class SuiteConfig(_Strict):
    """What kind of test driver this is, and (protocol mode) which scenarios to run, and how hard."""

    mode: SuiteMode | None = Field(
        None,
        description="protocol: vmtest's scenario events (the bundled drivers); text: the driver's own "
        "pass/fail lines (verdict.text); smoke: load, run the exerciser, unload, and no kernel warning. "
        "Default: protocol for a driver that speaks the protocol (a Linux module declaring a 'scenarios' "
        "parameter, any Windows driver), otherwise text when verdict.text is set, otherwise smoke",
    )
    scenarios: tuple[str, ...] = Field((), description="scenario names; empty: every non-negative one")
    threads: int = Field(3, ge=1, le=64)
    iterations: int = Field(200, ge=1, le=1_000_000)
    quiet_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="text and smoke modes: the run ends once loading returned and the kernel printed "
        "nothing new for this long (text mode ends sooner when the suite's outcome is known)",
    )
    exerciser: tuple[str, ...] = Field(
        (),
        description="smoke mode: a command run in the guest's copy of the driver package once it is loaded "
        "(a relative program such as ./exerciser is copied in from the package folder); empty: none",
    )


class VmtestConfig(_Strict):
    """A whole vmtest configuration file."""

    guest: GuestConfig = LinuxGuestConfig()
    machine: MachineConfig = MachineConfig()
    driver: DriverConfig = DriverConfig()
    suite: SuiteConfig = SuiteConfig()
    verdict: VerdictConfig = VerdictConfig()
    timeouts: Timeouts = Timeouts()
    artifacts: ConfigPath = Field(Path("vmtest-artifacts"), description="one subdirectory per run")

    _secret_paths: frozenset[tuple[str | int, ...]] = PrivateAttr(default=frozenset())

    @model_validator(mode="after")
    def _verifier_on_windows(self) -> VmtestConfig:
        if self.driver.verifier is not None and self.guest.kind != "windows11":
            raise ValueError(
                "driver.verifier: Driver Verifier runs only on a Windows guest (guest.kind: windows11)"
            )
        return self

    @model_validator(mode="after")
    def _mode_has_what_it_needs(self) -> VmtestConfig:
        if self.suite.mode == "text" and self.verdict.text is None:
            raise ValueError(
                "suite.mode text reads the driver's own pass/fail lines: describe them in verdict.text "
                "(suite, test_start, passed, failed)"
            )
        if self.suite.exerciser and self.suite.mode not in (None, "smoke"):
            raise ValueError(f"suite.exerciser is run in smoke mode only (suite.mode is {self.suite.mode})")
        return self

    @model_validator(mode="after")
    def _remember_secrets(self, info: ValidationInfo) -> VmtestConfig:
        self._secret_paths = frozenset((info.context or {}).get("secret_paths", ()))
        for path in self._secret_paths:
            _hide(self, path)
        return self

    @property
    def judging(self) -> VerdictConfig:
        """The verdict settings a run is judged with: Driver Verifier's catches added when it is on."""
        return self.verdict.with_verifier() if self.driver.verifier is not None else self.verdict

    def redacted(self) -> dict[str, Any]:
        """The resolved configuration as plain data, with every secret and environment value removed."""
        data = self.model_dump(mode="json")
        for path in self._secret_paths:
            _replace(data, path)
        _redact_secret_fields(self, data)
        return data


def _hide(model: _Strict, path: tuple[str | int, ...]) -> None:
    """Mark the field that holds ``path`` (the deepest one that is a model's field) as hidden from repr."""
    node = model
    for position, part in enumerate(path):
        if not (isinstance(part, str) and part in type(node).model_fields):
            return
        child = getattr(node, part)
        if isinstance(child, _Strict) and position < len(path) - 1:
            node = child
            continue
        node._hidden = node._hidden | {part}
        return


def _replace(data: Any, path: tuple[str | int, ...]) -> None:
    *parents, last = path
    node = data
    for part in parents:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(node, dict) and last in node:
        node[last] = REDACTED
    elif isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        node[last] = REDACTED


def _redact_secret_fields(model: BaseModel, data: dict[str, Any]) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            data[name] = REDACTED
        elif isinstance(value, BaseModel) and isinstance(data.get(name), dict):
            _redact_secret_fields(value, data[name])
