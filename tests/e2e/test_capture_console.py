"""The Linux console capture end to end: what the guest kernel prints reaches capture.log in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vmtest.config.models import LinuxGuestConfig, VmtestConfig
from vmtest.images.linux import build_linux_image
from vmtest.progress import PlainProgress
from vmtest.session import VmSession

pytestmark = pytest.mark.e2e


def test_kernel_log_from_the_first_line_to_a_message_written_after_login(tmp_path: Path) -> None:
    image = build_linux_image()
    config = VmtestConfig(artifacts=tmp_path, guest=LinuxGuestConfig(image=image.root))

    async def scenario() -> VmSession:
        async with VmSession(config, PlainProgress()) as session:
            last_probe = asyncio.Event()
            session.capture.on_line(
                lambda line: last_probe.set() if "vmtest capture probe 2" in line.text else None
            )
            guest = await session.connect()
            for number in range(3):
                argv = ["sh", "-c", f"echo 'vmtest capture probe {number}' > /dev/kmsg"]
                await session.call(
                    lambda argv=argv: guest.transport.run(argv, timeout=30), timeout=60, what="kmsg"
                )
            # The last probe line reached the capture (the console reader follows its file).
            await session.wait(last_probe.wait(), 30, "the last probe line in the capture")
        return session

    session = asyncio.run(scenario())
    lines = (session.run_dir.path / "capture.log").read_text().splitlines()
    assert " console " in lines[0]
    assert any("Linux version" in line for line in lines[:5]), (
        "the capture starts with the kernel's first line"
    )
    probes = [line for line in lines if "vmtest capture probe" in line]
    assert [line.rsplit(" ", 1)[-1] for line in probes] == ["0", "1", "2"]
    assert session.capture.lines_seen == len(lines)
