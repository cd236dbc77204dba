"""The ``vmtest`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vmtest import __version__
from vmtest.capture.source import printable_lines
from vmtest.cli_image import add_image_build_options, image_build
from vmtest.config import DEFAULT_CONFIG_NAME, load_config
from vmtest.config.loader import load_model
from vmtest.config.models import VmtestConfig
from vmtest.errors import EXIT_CONFIG, EXIT_TEST_FAILURE, ConfigError, VmtestError
from vmtest.loop import run_main
from vmtest.progress import make_progress
from vmtest.session import VmSession

__all__ = ["main"]

EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vmtest`` console script; returns the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    guest_command: list[str] = []
    if "--" in words:  # `vmtest exec [CONFIG] -- CMD...`: everything after -- is the guest's
        at = words.index("--")
        words, guest_command = words[:at], words[at + 1 :]
    parser = _parser()
    try:
        args = parser.parse_args(words)
    except SystemExit as done:  # usage errors (2) and --help (0): argparse has printed why
        return done.code if isinstance(done.code, int) else EXIT_CONFIG
    args.guest_command = guest_command
    _configure_logging(args.verbose)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except VmtestError as error:
        print(f"vmtest: {printable_lines(str(error))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("vmtest: interrupted (a VM it had started was shut down)", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmtest", description="Integration tests for kernel drivers in QEMU virtual machines."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log vmtest's own steps to stderr")
    parser.add_argument("--version", action="version", version=f"vmtest {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="boot, deploy, load, capture, unload, judge and report: the whole pipeline"
    )
    run.add_argument(
        "config", nargs="?", type=Path, help=f"default: ./{DEFAULT_CONFIG_NAME} or the Linux self-test guest"
    )
    run.add_argument(
        "--driver", type=Path, metavar="PATH", help="driver package folder, .sys, .ko or Kbuild source"
    )
    run.add_argument(
        "--scenario", action="append", default=[], metavar="NAME", help="a scenario (repeatable; a,b works)"
    )
    run.add_argument("--artifacts", type=Path, metavar="DIR", help="where the run directory goes")
    run.add_argument("--junitxml", type=Path, metavar="FILE", help="also write the JUnit XML here")
    run.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    run.add_argument("--keep-vm", action="store_true", help="leave the VM up afterwards (until Ctrl-C)")
    run.add_argument("--shard", metavar="I/N", help="run the I-th of N stable shares of the scenarios")
    run.add_argument(
        "-j", "--jobs", type=int, default=1, metavar="N", help="spread the scenarios over N VMs at once"
    )
    start = run.add_mutually_exclusive_group()
    start.add_argument(
        "--warm", dest="warm", action="store_true", default=None,
        help="start from the image's RAM snapshot of the ready guest, made by the first cold boot"
        " (default: machine.warm)",
    )  # fmt: skip
    start.add_argument("--cold", dest="warm", action="store_false", help="boot from scratch, not --warm")
    run.set_defaults(command=_run)

    doctor = commands.add_parser(
        "doctor", help="check this host can run the configured guest; say how to fix it"
    )
    doctor.add_argument("config", nargs="?", type=Path)
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument(
        "--artifacts", type=Path, metavar="DIR", help="where `vmtest run --artifacts` will write"
    )
    doctor.add_argument(
        "--guest",
        action="store_true",
        help="also boot the guest and check its assumptions (`vmtest probe`)",
    )
    doctor.set_defaults(command=_doctor)

    probe = commands.add_parser(
        "probe", help="boot the guest and check every assumption vmtest makes about it; write a report"
    )
    probe.add_argument("config", nargs="?", type=Path)
    probe.add_argument("--artifacts", type=Path, metavar="DIR", help="where the run directory goes")
    probe.add_argument("--json", action="store_true", help="print probe.json on stdout")
    probe.add_argument(
        "--record",
        type=Path,
        metavar="PROBE_JSON",
        help="boot nothing: fill the Seen column of --table from a real guest's probe.json",
    )
    probe.add_argument("--table", type=Path, default=Path("docs/WINDOWS.md"), help="the behaviour table")
    probe.set_defaults(command=_probe)

    kd = commands.add_parser("kd", help="be the kernel debugger on a VM's serial port: print DbgPrint live")
    where = kd.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--socket", metavar="PATH", help="a unix socket (QEMU -chardev socket,path=PATH,server=on)"
    )
    where.add_argument(
        "--tcp", metavar="HOST:PORT", help="a TCP serial port (QEMU -serial tcp:HOST:PORT,server=on)"
    )
    kd.add_argument("--raw", type=Path, metavar="FILE", help="also keep every byte of the link in FILE")
    kd.add_argument("--attach", action="store_true", help="break into a target that is already running")
    kd.add_argument("--hold-on-bugcheck", action="store_true", help="leave the guest stopped at a bugcheck")
    kd.set_defaults(command=_kd)

    merge = commands.add_parser("merge-reports", help="merge shards' JUnit and verdicts into one report")
    merge.add_argument("output", type=Path)
    merge.add_argument("shards", nargs="+", type=Path)
    merge.set_defaults(command=_merge_reports)

    validate = commands.add_parser("validate", help="check a configuration file and exit 0 (valid) or 2")
    validate.add_argument("config", nargs="?", type=Path, default=Path(DEFAULT_CONFIG_NAME))
    validate.set_defaults(command=_validate)

    boot = commands.add_parser("boot", help="boot the guest, wait until it is ready, screenshot, shut down")
    boot.add_argument(
        "config", nargs="?", type=Path, help=f"default: ./{DEFAULT_CONFIG_NAME} or the Linux self-test guest"
    )
    boot.add_argument(
        "--keep", action="store_true", help="keep the VM running (until Ctrl-C) and print how to reach it"
    )
    boot.add_argument(
        "--keep-for", type=float, default=3600.0, metavar="SECONDS", help="with --keep: at most"
    )
    boot.set_defaults(command=_boot)

    exec_ = commands.add_parser("exec", help="run a command in the guest: vmtest exec [CONFIG] -- CMD...")
    exec_.add_argument("config", nargs="?", type=Path)
    exec_.add_argument(
        "--vm", type=Path, metavar="RUN_DIR", help="a guest kept running by `vmtest boot --keep`"
    )
    exec_.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
    exec_.set_defaults(command=_exec)

    copy = commands.add_parser(
        "copy", help="copy a file in or out: vmtest copy [CONFIG] SRC DST (guest:PATH)"
    )
    copy.add_argument("operands", nargs="+", metavar="[CONFIG] SRC DST")
    copy.add_argument(
        "--vm", type=Path, metavar="RUN_DIR", help="a guest kept running by `vmtest boot --keep`"
    )
    copy.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
    copy.set_defaults(command=_copy)

    image = commands.add_parser("image", help="build guest images")
    image_commands = image.add_subparsers(title="image commands", required=True, metavar="ACTION")
    build = image_commands.add_parser("build", help="build a guest image")
    add_image_build_options(build)
    build.set_defaults(command=image_build)

    analyze = commands.add_parser(
        "analyze", help="judge a saved capture offline: exit 0 all passed, 1 a failure, 2 bad input"
    )
    analyze.add_argument("log", type=Path, help="a capture: vmtest's, DebugView, KD, a console log")
    analyze.add_argument("--config", type=Path, help="a YAML file with a verdict: section")
    analyze.add_argument(
        "--scenario", action="append", default=[], metavar="NAME", help="expected scenario (repeatable)"
    )
    analyze.add_argument("--json", action="store_true", help="print the verdict as JSON")
    analyze.set_defaults(command=_analyze)
    return parser


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("vmtest: %(levelname)s: %(message)s"))
    root = logging.getLogger("vmtest")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def _run(args: argparse.Namespace) -> int:
    from vmtest.cli_run import run_command

    return run_command(
        args.config,
        driver=args.driver,
        scenarios=args.scenario,
        artifacts=args.artifacts,
        junitxml=args.junitxml,
        json_output=args.json,
        keep_vm=args.keep_vm,
        shard_spec=args.shard,
        warm=args.warm,
        jobs=args.jobs,
    )


def _doctor(args: argparse.Namespace) -> int:
    from vmtest.doctor import doctor_command

    code = doctor_command(args.config, json_output=args.json, artifacts=args.artifacts)
    if not args.guest:
        return code
    return max(code, _probe(args))


def _probe(args: argparse.Namespace) -> int:
    from vmtest.probe import run_probe

    if getattr(args, "record", None) is not None:
        return _record_probe(args.record, args.table)
    config = load_config(args.config)
    if args.artifacts is not None:
        config = config.model_copy(update={"artifacts": args.artifacts})
    progress = make_progress()
    try:
        report = run_main(run_probe(config, progress))
    finally:
        progress.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    print(report.summary(), file=sys.stderr)
    return EXIT_TEST_FAILURE if report.blocking else 0


def _record_probe(report_path: Path, table_path: Path) -> int:
    from vmtest.probe.table import record_report

    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        table = table_path.read_text(encoding="utf-8")
        updated = record_report(table, report)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot record {report_path} in {table_path}: {error}") from None
    table_path.write_text(updated, encoding="utf-8")
    print(f"vmtest: {table_path} updated from {report_path}", file=sys.stderr)
    return 0


def _kd(args: argparse.Namespace) -> int:
    from vmtest.capture.kd import KdConnectError, run_kd

    address = args.socket or args.tcp
    raw = open(args.raw, "ab") if args.raw else None  # noqa: SIM115
    try:
        return run_main(
            run_kd(
                address, out=sys.stdout, raw=raw, attach=args.attach, hold_on_bugcheck=args.hold_on_bugcheck
            )
        )
    except KdConnectError as error:
        raise ConfigError(str(error)) from None
    finally:
        if raw is not None:
            raw.close()


def _merge_reports(args: argparse.Namespace) -> int:
    from vmtest.report.merge import merge_command

    return merge_command(args.output, args.shards)


def _validate(args: argparse.Namespace) -> int:
    load_model(VmtestConfig, args.config)
    print(f"{args.config}: valid")
    return 0


def _boot(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    return run_main(_boot_async(config, args.keep_for if args.keep else None))


def _exec(args: argparse.Namespace) -> int:
    from vmtest.cli_guest import execute

    return execute(args.config, args.vm, args.guest_command, args.timeout)


def _copy(args: argparse.Namespace) -> int:
    from vmtest.cli_guest import copy

    operands: list[str] = args.operands
    if len(operands) not in (2, 3):
        raise ConfigError("usage: vmtest copy [CONFIG] SRC DST, with guest paths written as guest:PATH")
    config = Path(operands[0]) if len(operands) == 3 else None
    return copy(config, args.vm, operands[-2], operands[-1], args.timeout)


def _analyze(args: argparse.Namespace) -> int:
    from vmtest.errors import EXIT_TEST_FAILURE
    from vmtest.verdict.analyze import analyze_file

    verdict = analyze_file(args.log, args.config, args.scenario)
    print(verdict.to_json() if args.json else verdict.render())
    return 0 if verdict.passed else EXIT_TEST_FAILURE


async def _boot_async(config: VmtestConfig, keep_for: float | None) -> int:
    progress = make_progress()
    started = time.monotonic()
    try:
        async with VmSession(config, progress, label="boot") as session:
            ready_after = time.monotonic() - started
            assert session.machine is not None
            shot = await session.screenshot("ready")
            ports = ", ".join(
                f"{name} on 127.0.0.1:{port}" for name, port in session.machine.forwards.items()
            )
            progress.note(f"guest ready after {ready_after:.1f}s ({ports})")
            progress.note(f"screenshot: {shot}" if shot else "screenshot: not taken (see vmtest.log)")
            if keep_for is not None:
                await session.keep(keep_for)
        progress.note(f"logs: {session.run_dir.path}")
        report = session.shutdown_report
        if report is not None:
            progress.note(f"shut down by {report.step} (QEMU exit status {report.returncode})")
    finally:
        progress.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
