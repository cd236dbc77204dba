"""The Linux driver lifecycle end to end: a real module built against the guest's headers, in the guest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from vmtest.config.models import LinuxGuestConfig, VmtestConfig
from vmtest.drivers.kbuild import build_module
from vmtest.drivers.lifecycle import DeployedDriver
from vmtest.errors import DriverError
from vmtest.facade import BackgroundSession
from vmtest.images.linux import LinuxImage, build_linux_image
from vmtest.progress import PlainProgress

pytestmark = pytest.mark.e2e

MODULE_SOURCE = Path(__file__).parent / "modules" / "vmtest_lifecycle"
T = TypeVar("T")


@pytest.fixture(scope="module")
def image() -> LinuxImage:
    return build_linux_image()


@pytest.fixture(scope="module")
def module_ko(image: LinuxImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_module(MODULE_SOURCE, image.headers, tmp_path_factory.mktemp("build") / "vmtest_lifecycle")


@pytest.fixture(scope="module")
def booted(image: LinuxImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundSession]:
    config = VmtestConfig(artifacts=tmp_path_factory.mktemp("runs"), guest=LinuxGuestConfig(image=image.root))
    booted = BackgroundSession(config, PlainProgress(), label="e2e")
    try:
        booted.start()
        yield booted
    finally:
        booted.close()


@pytest.fixture
def deployed(booted: BackgroundSession, module_ko: Path) -> Iterator[DeployedDriver]:
    driver = booted.call(booted.guest.drivers.deploy, module_ko)
    yield driver
    drivers = booted.guest.drivers
    if booted.call(drivers.is_loaded, driver):
        booted.call(drivers.unload, driver)
    booted.call(drivers.remove, driver)


def kernel_log(booted: BackgroundSession) -> str:
    return booted.call(lambda: booted.guest.transport.run(["dmesg"], timeout=30).stdout.decode())


def run(booted: BackgroundSession, *argv: str) -> int:
    return booted.call(lambda: booted.guest.transport.run(argv, timeout=30).exit_code)


def test_module_was_built_for_the_guest_kernel(booted: BackgroundSession, image: LinuxImage) -> None:
    result = booted.call(lambda: booted.guest.transport.run(["uname", "-r"], timeout=30))
    assert result.stdout.decode().strip() == image.kernel_release


def test_load_with_parameters_then_unload_and_remove(
    booted: BackgroundSession, deployed: DeployedDriver
) -> None:
    drivers = booted.guest.drivers
    booted.call(drivers.load, deployed, {"greeting": "hello from vmtest", "count": 2})
    assert run(booted, "test", "-d", "/sys/module/vmtest_lifecycle") == 0
    log = kernel_log(booted)
    assert "vmtest_lifecycle: hello from vmtest 1/2" in log
    assert "vmtest_lifecycle: hello from vmtest 2/2" in log
    booted.call(drivers.unload, deployed)
    assert run(booted, "test", "-d", "/sys/module/vmtest_lifecycle") != 0
    assert "vmtest_lifecycle: unloaded" in kernel_log(booted)
    booted.call(drivers.remove, deployed)
    assert run(booted, "test", "-e", deployed.guest_binary) != 0


def test_loading_twice_reloads(booted: BackgroundSession, deployed: DeployedDriver) -> None:
    drivers = booted.guest.drivers
    booted.call(drivers.load, deployed, {"greeting": "first"})
    booted.call(drivers.load, deployed, {"greeting": "second"})
    assert "vmtest_lifecycle: second 1/1" in kernel_log(booted)


def test_failing_init_is_a_driver_error_with_the_errno(
    booted: BackgroundSession, deployed: DeployedDriver
) -> None:
    with pytest.raises(DriverError) as caught:
        booted.call(booted.guest.drivers.load, deployed, {"init_result": -19})
    assert "init function returned an error (No such device)" in str(caught.value)
    assert "vmtest_lifecycle: hello 1/1" in caught.value.output


def test_unknown_parameter_is_a_driver_error(booted: BackgroundSession, deployed: DeployedDriver) -> None:
    with pytest.raises(DriverError, match="does not know the parameter\\(s\\) no_such_knob"):
        booted.call(booted.guest.drivers.load, deployed, {"no_such_knob": 1})
    assert run(booted, "test", "-d", "/sys/module/vmtest_lifecycle") != 0


def test_a_file_that_is_not_a_module_is_refused_plainly(booted: BackgroundSession, tmp_path: Path) -> None:
    fake = tmp_path / "fake.ko"
    fake.write_bytes(b"this is not an ELF file" * 100)
    drivers = booted.guest.drivers
    driver = booted.call(drivers.deploy, fake)
    with pytest.raises(DriverError, match=r"built for another kernel .* or is not a module"):
        booted.call(drivers.load, driver, {})
    booted.call(drivers.remove, driver)


def test_unloading_a_module_that_is_not_loaded(booted: BackgroundSession, deployed: DeployedDriver) -> None:
    with pytest.raises(DriverError, match="the module is not loaded"):
        booted.call(booted.guest.drivers.unload, deployed)
