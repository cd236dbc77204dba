"""Hostile input: generated configurations and command lines, broken driver packages, guest output.

Configurations and command lines go through ``vmtest.cli.main`` in this process (the pipeline itself is
replaced by a stub that says it was reached, so a valid command line boots nothing); whatever they are,
``main`` returns an exit code and prints no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import shutil
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SharedVm
from faultlib import ROOT, Record, load_test_module, vmtest_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmtest.parallel
import vmtest.pipeline
from vmtest.capture.source import Capture
from vmtest.cli import main
from vmtest.drivers.lifecycle import DeployedDriver
from vmtest.drivers.windows import WindowsDriverLifecycle
from vmtest.errors import DriverError, VmtestError
from vmtest.images.linux import LinuxImage
from vmtest.machine.console import SerialConsole
from vmtest.pipeline import EventCollector

EXAMPLES = 120
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WINDOWS_FAKES = ROOT / "tests" / "unit" / "test_windows_lifecycle.py"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # what a terminal would act on (not \t, \n)

# ----------------------------------------------------------------------------------------- the harness


class PipelineReached(Exception):
    """The command line was valid: the real pipeline would boot a VM here."""


@contextlib.contextmanager
def stubbed_pipeline() -> Iterator[None]:
    """``vmtest run`` stops where it would boot a VM."""

    async def stub(*_args: object, **_kwargs: object) -> None:
        raise PipelineReached

    places = ((vmtest.pipeline, "run_pipeline"), (vmtest.parallel, "run_parallel"))
    saved = [(module, name, getattr(module, name)) for module, name in places]
    for module, name, _ in saved:
        setattr(module, name, stub)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def call_main(argv: list[str]) -> tuple[int | str, str]:
    """``main(argv)`` with its output captured: (exit code, or the name of what it raised; output)."""
    out = io.StringIO()
    vmtest_logger = logging.getLogger("vmtest")
    handlers = list(vmtest_logger.handlers)
    try:
        with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
            try:
                code: int | str = main(argv)
            except PipelineReached:
                code = "pipeline"
            except BaseException as error:
                code = f"raised {type(error).__name__}: {error}"
    finally:
        vmtest_logger.handlers[:] = handlers  # main adds a stderr handler per call
    return code, out.getvalue()


# ----------------------------------------------------------------------------------- configurations

SETTING_NAMES = [
    "guest", "machine", "driver", "suite", "verdict", "timeouts", "artifacts", "kind", "image", "append",
    "ssh", "user", "key", "password", "host_key", "qemu", "accel", "cpus", "memory_mib", "extra_args",
    "package", "parameters", "scenarios", "threads", "iterations", "boot", "command", "<<", "",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["${VMTEST_FAULTS_UNSET}", "${HOME}", "${", "\0", "~", "../" * 5, "linux", "auto"]),
)
setting_keys = st.one_of(st.sampled_from(SETTING_NAMES), st.text(max_size=8))


def nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists and mappings of ``inner``."""
    return st.lists(inner, max_size=4) | st.dictionaries(setting_keys, inner, max_size=5)


values = st.recursive(scalars, nested, max_leaves=20)
documents = st.dictionaries(st.sampled_from(SETTING_NAMES), values, max_size=6)
raw_texts = st.one_of(
    st.text(max_size=200),
    st.sampled_from(
        [
            "a: &a [*a]\n",
            "[" * 3000,
            "guest: !!python/object/apply:os.system ['true']\n",
            "machine:\n  cpus: 2\n  cpus: 3\n",
            "guest:\n  kind: windows11\n",
            "\ufeffmachine: {cpus: 1e400}\n",
            "- just\n- a list\n",
            "%YAML 9.9\n---\nx: 1\n",
        ]
    ),
)


def test_generated_configurations_never_raise(tmp_path: Path, record: Record) -> None:
    row = record(
        "generated configuration files",
        f"hypothesis: {EXAMPLES} YAML documents (random settings, types, ${{ENV}}, NUL, aliases, deep"
        " nesting, raw text) through `main(['validate', FILE])` in process",
        "exit 0 or 2 with `file:line:column` problems; never raises, never a traceback",
    )
    codes: dict[int | str, int] = {}
    path = tmp_path / "vmtest.yaml"

    @SETTINGS
    @given(document=st.one_of(documents.map(lambda doc: yaml.safe_dump(doc, allow_unicode=True)), raw_texts))
    def check(document: str) -> None:
        path.write_text(document, encoding="utf-8", errors="surrogatepass")
        code, output = call_main(["validate", str(path)])
        codes[code] = codes.get(code, 0) + 1
        assert code in (0, 2), (code, output)
        assert "Traceback" not in output
        if code == 2:
            assert "configuration problem" in output

    try:
        check()
    finally:
        row.observed = f"exit codes: {dict(sorted(codes.items(), key=str))}"


OPTION_WORDS = [
    "--driver", "--scenario", "--artifacts", "--junitxml", "--json", "--keep-vm", "--shard", "-j", "--jobs",
    "--warm", "--cold", "-v", "--", "--bogus", "--scenario=", "-j0", "--shard=0/0", "--shard=2/1", "-h",
]  # fmt: skip
words = st.one_of(
    st.sampled_from(OPTION_WORDS),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=12),
    st.sampled_from(["1/2", "x/y", "-1", "999999999999", "kmutex_contention", ",", "nonexistent.yaml"]),
)


def test_generated_run_command_lines_never_raise(tmp_path: Path, record: Record) -> None:
    row = record(
        "generated `vmtest run` command lines",
        f"hypothesis: {EXAMPLES} argument lists (real and bogus options, random values) through"
        " `main(['run', ...])` in process, the VM part stubbed out",
        "an exit code (2 for usage and configuration errors) or the pipeline reached; never a traceback",
    )
    codes: dict[int | str, int] = {}

    @SETTINGS
    @given(argv=st.lists(words, max_size=8))
    def check(argv: list[str]) -> None:
        full = ["run", *argv] if "--" in argv else ["run", *argv, "--artifacts", str(tmp_path / "runs")]
        with stubbed_pipeline():
            code, output = call_main(full)
        codes[code] = codes.get(code, 0) + 1
        assert code in (0, 1, 2, 3, "pipeline"), (full, code, output)
        assert "Traceback" not in output

    try:
        check()
    finally:
        row.observed = f"outcomes: {dict(sorted(codes.items(), key=str))}"


def test_known_hostile_configurations(tmp_path: Path, record: Record) -> None:
    row = record(
        "known hostile configurations",
        "a recursive alias, an alias bomb (9 levels of 9), 3000 nested lists, a NUL in a path,"
        " `vmtest run --bogus`",
        "exit 2 with a problem named; no traceback, no hang",
    )
    alias_bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]\n" for n in range(1, 9)
    )
    seen = []
    for name, text in (
        ("recursive alias", "a: &a [*a]\n"),
        ("alias bomb", alias_bomb),
        ("3000 nested lists", "[" * 3000 + "]" * 3000),
        ("NUL in a path", 'artifacts: "runs\\0x"\n'),
    ):
        path = tmp_path / "vmtest.yaml"
        path.write_text(text)
        code, output = call_main(["validate", str(path)])
        problem = output.strip().splitlines()[-1].split(": ", 1)[-1] if output.strip() else ""
        seen.append(f"{name}: exit {code} (`{problem}`)")
        row.observed = "; ".join(seen)
        assert code == 2 and "Traceback" not in output, (name, code, output)
    code, output = call_main(["run", "--bogus"])
    seen.append(f"`run --bogus`: exit {code}")
    row.observed = "; ".join(seen)
    assert code == 2 and "unrecognized arguments: --bogus" in output


# --------------------------------------------------------------------------------- driver packages


def aarch64_copy(module: Path, target: Path) -> Path:
    """``module`` with its ELF header saying AArch64 (e_machine 183): a module for the wrong machine."""
    data = bytearray(module.read_bytes())
    struct.pack_into("<H", data, 18, 183)
    target.write_bytes(data)
    return target


@pytest.fixture
def broken_linux_packages(faults_ko: Path, tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty-package"
    empty.mkdir()
    two = tmp_path / "two-modules"
    two.mkdir()
    shutil.copyfile(faults_ko, two / "one.ko")
    shutil.copyfile(faults_ko, two / "two.ko")
    text = tmp_path / "notes.ko"
    text.write_text("this is not a kernel module\n")
    windows = tmp_path / "driver.sys"
    windows.write_bytes(b"MZ" + bytes(200))
    return {
        "no module in the package": empty,
        "two modules in the package": two,
        "a missing file": tmp_path / "missing.ko",
        "a text file named .ko": text,
        "a Windows .sys": windows,
        "an ELF module for AArch64": aarch64_copy(faults_ko, tmp_path / "vmtest_faults.ko"),
    }


@pytest.mark.e2e
@pytest.mark.parametrize(
    "case",
    [
        "no module in the package",
        "two modules in the package",
        "a missing file",
        "a text file named .ko",
        "a Windows .sys",
        "an ELF module for AArch64",
    ],
)
def test_broken_linux_package_gives_a_clear_message(
    case: str, shared_vm: SharedVm, broken_linux_packages: dict[str, Path], record: Record
) -> None:
    expectations = {
        "no module in the package": "exactly one .ko",
        "two modules in the package": "exactly one .ko",
        "a missing file": "does not exist",
        "a text file named .ko": "not an ELF file",
        "a Windows .sys": "not a Linux kernel module",
        "an ELF module for AArch64": "built for aarch64, but the guest runs x86_64 modules",
    }
    row = record(
        f"broken Linux driver package: {case}",
        "deploy and load through the Linux lifecycle in the guest",
        f"DriverError whose message says so (`{expectations[case]}`)",
    )
    drivers = shared_vm.guest.drivers
    package = broken_linux_packages[case]

    def deploy_and_load() -> None:
        driver: DeployedDriver = drivers.deploy(package)
        try:
            drivers.load(driver, {})
        finally:
            with contextlib.suppress(VmtestError):
                drivers.remove(driver)

    with pytest.raises(DriverError) as caught:
        shared_vm.background.call(deploy_and_load, timeout=120, what="deploying a broken package")
    message = str(caught.value)
    row.observed = f"DriverError: `{message}`" + (" (with the kernel log)" if caught.value.output else "")
    assert expectations[case] in message


def pe_image(machine: int) -> bytes:
    """A minimal PE header (MZ, e_lfanew, PE signature, COFF machine) for ``machine``, PE32+ with an empty
    security directory (no embedded signature)."""
    image = bytearray(1024)
    image[:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, 0x80)
    image[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<H", image, 0x84, machine)
    struct.pack_into("<H", image, 0x80 + 24, 0x20B)  # PE32+ optional header
    struct.pack_into("<I", image, 0x80 + 24 + 108, 16)  # NumberOfRvaAndSizes; entry 4 left empty
    return bytes(image)


@pytest.mark.parametrize(
    ("case", "content", "expected"),
    [
        ("no .sys in the package", None, "holds no .sys file"),
        ("a PE built for ARM64", pe_image(0xAA64), "ARM64"),
        ("a text file named .sys", b"not a driver\r\n", "not a PE image"),
        ("an ELF file named .sys", b"\x7fELF\x02\x01\x01" + bytes(57), "not a PE image"),
        ("an unsigned x64 driver", pe_image(0x8664), "carries no signature"),
    ],
)
def test_broken_windows_package_gives_a_clear_message(
    case: str, content: bytes | None, expected: str, tmp_path: Path, record: Record
) -> None:
    row = record(
        f"broken Windows driver package: {case}",
        "deploy and load through the Windows lifecycle against the scripted guest of the unit tests, which"
        " answers with documented output; the .sys's PE security directory is read before copying",
        f"DriverError whose message says so (`{expected}`)",
    )
    package = tmp_path / "package"
    package.mkdir()
    (package / "readme.txt").write_text("a package folder")
    if content is not None:
        (package / "mydriver.sys").write_bytes(content)
    fakes = load_test_module(WINDOWS_FAKES, "windows_lifecycle_fakes_for_faults")
    guest = fakes.FakeWindows(start="577")
    windows = WindowsDriverLifecycle(guest, "run1", state_timeout=1.0, poll_interval=0.0)
    with pytest.raises(DriverError) as caught:
        windows.load(windows.deploy(package), {})
    row.observed = f"DriverError: `{caught.value}`; copied into the guest: {sorted(guest.files) or 'nothing'}"
    assert expected in str(caught.value)


# ------------------------------------------------------------------------------------- guest output


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["hostile", "fail"])
def test_hostile_guest_output_is_neutralised_everywhere(
    mode: str, tmp_path: Path, image: LinuxImage, faults_ko: Path, record: Record
) -> None:
    how = "prints them, then passes" if mode == "hostile" else "prints them, then its init fails"
    row = record(
        f"hostile kernel output ({mode})",
        "faults module printing terminal escapes (clear screen, window title, hyperlink, colours), control"
        f" and high bytes, `<script>`, a carriage return, an 900-byte line, escapes in `msg=`; {how}",
        "no control character reaches the terminal, capture.log or report.html; HTML escaped",
    )
    config = tmp_path / "vmtest.yaml"
    config.write_text(f"guest:\n  image: {image.root}\ndriver:\n  parameters:\n    mode: {mode}\n")
    artifacts = tmp_path / "runs"
    args = ["run", str(config), "--driver", str(faults_ko), "--scenario", "fault_a"]
    with vmtest_run([*args, "--artifacts", str(artifacts)], artifacts=artifacts) as run:
        finished = run.finish()
    run_dir = finished.run_dir
    assert run_dir is not None
    capture = (run_dir / "capture.log").read_bytes().decode("utf-8", errors="replace")
    html = (run_dir / "report.html").read_text()
    raw = (run_dir / "serial-console.log").read_bytes()
    places = {
        "terminal (stderr)": finished.stderr,
        "stdout": finished.stdout,
        "capture.log": capture,
        "report.html": html,
        "verdicts.json (decoded)": json.dumps(json.loads((run_dir / "verdicts.json").read_text())),
    }
    dirty = {name: sorted(set(CONTROL.findall(text))) for name, text in places.items()}
    dirty = {name: found for name, found in dirty.items() if found}
    kept = b"\x1b]0;pwned" in raw
    escaped = "\\x1b[2J" in capture
    row.observed = (
        f"exit {finished.returncode}; raw escapes kept in serial-console.log: {kept}; control characters"
        f" found in: {dirty or 'none'}; `<script>` unescaped in report.html: {'<script>' in html};"
        f" shown escaped in capture.log: {escaped}"
    )
    assert b"\x1b]0;pwned-title" in raw, "the module did not print what the test expects"
    assert not dirty
    assert "<script>" not in html
    assert "\\x1b[2J" in capture
    assert finished.returncode == 1


def test_endless_and_malformed_lines_keep_memory_bounded(tmp_path: Path, record: Record) -> None:
    row = record(
        "endless lines, malformed protocol lines and binary junk on the serial console",
        "fed to the console reader, the capture and the event collector 64 KiB at a time: 64 MiB without a"
        " newline, 2000 malformed 16 KB `VMTEST1` lines, binary bytes and escapes, a 1 MiB line in one read",
        "memory stays bounded (lines cut at 16 KiB, protocol problems capped); capture.log escaped text only",
    )

    handed_out = [0]  # the longest line the console handed to its listeners, in characters

    def measure(text: str) -> None:
        handed_out[0] = max(handed_out[0], len(text))

    async def feed() -> tuple[int, int, int]:
        console = SerialConsole("console")
        console.add_line_listener(measure)
        capture = Capture(tmp_path / "capture.log")
        collector = EventCollector(["fault_a"], tmp_path / "events.jsonl")
        capture.on_line(collector.take)
        console.add_line_listener(lambda text: capture.add_line("console", text))
        malformed = b"VMTEST1 seq=1 ev=acquire " + b"x" * 16000 + b"\n"
        tracemalloc.start()
        try:
            for _ in range(1024):
                console._take(b"A" * 65536)
            for _ in range(2000):
                console._take(malformed)
            for _ in range(64):
                console._take(bytes(range(256)) * 256 + b"\x1b]0;title\x07\x1b[2J\r\n")
            console._take(b"B" * (1 << 20) + b"\n")  # a whole 1 MiB line in one read
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            capture.close()
            collector.close()
        return peak, collector.problem_count, len(collector.problems)

    peak, problems, kept = asyncio.run(feed())
    data = (tmp_path / "capture.log").read_bytes()
    longest = max(len(line) for line in data.split(b"\n"))
    controls = sorted(set(CONTROL.findall(data.decode("utf-8", errors="replace"))))
    row.observed = (
        f"peak Python memory {peak / 2**20:.1f} MiB for 97 MiB fed; longest line handed out {handed_out[0]}"
        f" characters, longest capture.log line {longest} bytes;"
        f" {problems} protocol problems counted, {kept} kept; control characters in capture.log:"
        f" {controls or 'none'}"
    )
    assert peak < 16 * 2**20
    assert handed_out[0] == 16 * 1024  # cut at 16 KiB (each byte decodes to at most one character)
    # In capture.log a character is escaped to at most 4 bytes (\xNN), after a stamp and the source.
    assert longest <= 4 * 16 * 1024 + 64
    assert problems == 2000 and kept <= 100
    assert not controls
