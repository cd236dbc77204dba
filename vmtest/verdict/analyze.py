"""The verdict of captured lines: offline for ``vmtest analyze``, and the same function for a live run.

The capture is streamed once: protocol lines go to the checks, the other lines to the crash scanner
(KD bugcheck banners, Linux panics and BUGs) and, when configured, to the text-verdict reader.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from vmtest.config.loader import load_model
from vmtest.errors import ConfigError, ConfigProblem
from vmtest.events.reader import EventReader, open_capture
from vmtest.verdict.config import AnalyzeConfig, VerdictConfig
from vmtest.verdict.crashes import Crash, CrashScanner
from vmtest.verdict.text import TextVerdictReader
from vmtest.verdict.verdict import Judge, RunVerdict

__all__ = ["analyze_capture", "analyze_file", "judge_lines", "load_analyze_config"]

log = logging.getLogger(__name__)


def analyze_file(
    log_path: Path, config_path: Path | None = None, scenarios: Sequence[str] = ()
) -> RunVerdict:
    """The verdict of the capture at ``log_path``; bad input raises ConfigError.

    ``scenarios`` are those requested (names, or comma-separated lists of names; none: every one seen).
    """
    config = load_analyze_config(config_path)
    requested = [name.strip() for item in scenarios for name in item.split(",") if name.strip()]
    return analyze_capture(log_path, config, requested)


def load_analyze_config(path: Path | None) -> AnalyzeConfig:
    """The ``verdict:`` section of ``path`` (defaults without a file); ConfigError with file:line:column."""
    return load_model(AnalyzeConfig, path) if path is not None else AnalyzeConfig()


def analyze_capture(log_path: Path, config: AnalyzeConfig, requested: Sequence[str] = ()) -> RunVerdict:
    """The verdict of a capture file, read once as a stream; an unreadable file raises ConfigError."""
    try:
        with open_capture(log_path) as capture:
            return judge_lines(capture, config.verdict, requested)
    except FileNotFoundError:
        raise _bad(log_path, "capture file not found") from None
    except IsADirectoryError:
        raise _bad(log_path, "is a directory, not a capture file") from None
    except OSError as error:
        raise _bad(log_path, f"cannot read the capture: {error.strerror or error}") from None


def judge_lines(
    lines: Iterable[str],
    options: VerdictConfig | None = None,
    requested: Sequence[str] = (),
    crashes: Sequence[Crash] = (),
) -> RunVerdict:
    """The verdict of captured lines (any capture format), with ``crashes`` known from elsewhere (QMP).

    The lines go through the event reader to the checks; the other lines to the crash scanner and,
    when configured, the text-verdict reader. Memory stays bounded whatever the number of lines.
    """
    options = options or VerdictConfig()
    scanner = CrashScanner()
    text = TextVerdictReader(options.text) if options.text is not None else None

    def other_line(line: str, lineno: int) -> None:
        scanner.feed(line, lineno)
        if text is not None:
            text.feed(line, lineno)

    reader = EventReader(tail=options.tail_lines, on_other_line=other_line)
    referee = Judge(options)
    referee.feed_all(reader.read(lines))
    log.debug("%d lines, %d events", reader.lineno, referee.events)
    return referee.finish(
        requested=requested,
        crashes=[*scanner.crashes, *crashes],
        problems=reader.problems,
        problem_count=reader.problem_count,
        problem_seqs=reader.problem_seqs,
        tails=reader.tails(),
        text_results=text.results() if text is not None else (),
    )


def _bad(path: Path, message: str) -> ConfigError:
    return ConfigError([ConfigProblem(str(path), None, None, "", message)])
