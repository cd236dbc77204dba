"""The Windows profile's swtpm runs confined like QEMU (its user, in its state folder) and a confined QEMU
reaches it: the real swtpm and QEMU, with the TPM front end of the Windows profile on an empty q35."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

import pytest

from vmtest.config.models import MachineConfig
from vmtest.machine.confine import Confinement
from vmtest.machine.process import spawn_bound_to_parent
from vmtest.machine.profiles.windows11 import (
    TPM_STATE,
    TpmSettings,
    Windows11Profile,
    WindowsHardware,
    tpm_socket,
)
from vmtest.machine.rundir import RunDirectory

QEMU = shutil.which("qemu-system-x86_64")

pytestmark = pytest.mark.skipif(
    QEMU is None or shutil.which("swtpm") is None, reason="QEMU and swtpm are needed"
)


def owner(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def test_a_confined_qemu_reaches_the_confined_swtpm(tmp_path: Path) -> None:
    assert QEMU is not None
    confinement = Confinement.from_config(MachineConfig())
    hardware = WindowsHardware(
        disk=tmp_path / "disk.qcow2", efivars=tmp_path / "vars.qcow2", ovmf_code=tmp_path / "code.fd",
        tpm=TpmSettings(),
    )  # fmt: skip
    profile = Windows11Profile(hardware)
    profile.confinement = confinement
    run_dir = RunDirectory.create(tmp_path / "runs")
    expected_uid = confinement.run_as.uid if confinement.run_as is not None else os.geteuid()

    async def scenario() -> tuple[int, int | None, int | None]:
        await profile.start_helpers(run_dir.path)
        try:
            assert profile._swtpm is not None
            swtpm_uid = owner(profile._swtpm.pid)
            qemu = await spawn_bound_to_parent(
                [
                    QEMU, *confinement.qemu_args(), "-machine", "q35", "-S", "-nodefaults", "-no-user-config",
                    "-display", "none", "-accel", "tcg",
                    "-chardev", f"socket,id=chrtpm,path={tpm_socket(run_dir.path)}",
                    "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0",
                ],
                log=run_dir.qemu_log,
                confinement=confinement,
            )  # fmt: skip
            with contextlib.suppress(asyncio.TimeoutError):  # QEMU exits at once if it cannot reach it
                await asyncio.wait_for(qemu.wait(), 3)
            alive = qemu.returncode
            if qemu.returncode is None:
                qemu.kill()
                await qemu.wait()
            ended = None
            with contextlib.suppress(asyncio.TimeoutError):  # --terminate: swtpm ends with QEMU
                ended = await asyncio.wait_for(profile._swtpm.wait(), 10)
            return swtpm_uid, alive, ended
        finally:
            await profile.stop_helpers()

    swtpm_uid, qemu_exit, swtpm_exit = asyncio.run(scenario())
    assert swtpm_uid == expected_uid
    assert qemu_exit is None, run_dir.qemu_log.read_text()
    assert swtpm_exit is not None
    state = run_dir.path / TPM_STATE
    assert state.stat().st_uid == expected_uid
    assert any(state.iterdir()), "swtpm wrote no state"
    assert not tpm_socket(run_dir.path).parent.exists()
