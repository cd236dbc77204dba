"""Quoting argument lists for the guest's shell, so no untrusted value is ever pasted into a command.

Two shells matter: POSIX ``sh`` (Linux guests, busybox) and ``cmd.exe`` (the default shell of Windows
OpenSSH, and what PsExec runs through). A command is always built from a list of arguments.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Literal

__all__ = ["ShellKind", "cmd_join", "cmd_quote", "join_for", "posix_join"]

ShellKind = Literal["posix", "cmd"]

_CMD_SAFE = re.compile(r"^[A-Za-z0-9_\-+=.,:/\\@{}\[\]]+$")
_CMD_META = re.compile(r'([()%!^"<>&|])')


def posix_join(argv: Sequence[str]) -> str:
    """Quote each argument for POSIX sh and join them."""
    return shlex.join(argv)


def cmd_quote(argument: str) -> str:
    """Quote one argument for a program started by cmd.exe.

    Two layers: the C runtime's ``CommandLineToArgvW`` rules (backslashes before a quote are doubled,
    quotes escaped with a backslash), then cmd.exe's own metacharacters escaped with ``^`` so that
    ``&``, ``|``, ``<``, ``>``, ``%`` and ``!`` reach the program as text.
    """
    if argument and _CMD_SAFE.match(argument):
        return argument
    if "\n" in argument or "\r" in argument or "\0" in argument:
        raise ValueError("a cmd.exe argument cannot contain a line break or NUL")
    quoted = ['"']
    backslashes = 0
    for char in argument:
        if char == "\\":
            backslashes += 1
            continue
        if char == '"':
            quoted.append("\\" * (2 * backslashes + 1) + '"')
        else:
            quoted.append("\\" * backslashes + char)
        backslashes = 0
    quoted.append("\\" * (2 * backslashes) + '"')
    return _CMD_META.sub(r"^\1", "".join(quoted))


def cmd_join(argv: Sequence[str]) -> str:
    """Quote each argument for cmd.exe and join them."""
    return " ".join(cmd_quote(argument) for argument in argv)


def join_for(shell: ShellKind, argv: Sequence[str]) -> str:
    """Quote ``argv`` for ``shell``."""
    return posix_join(argv) if shell == "posix" else cmd_join(argv)
