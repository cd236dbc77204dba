"""The rendered answer file, parsed as XML, pass by pass; and the provisioning protocol around it.

Setting names and passes: windows11-vm.md §2.3-§2.7. Every check parses the document with
xml.etree and the unattend namespace; none searches the text.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmtest.errors import ConfigError, ImageError
from vmtest.images.windows11 import (
    MARKERS,
    AnswerSettings,
    ProvisionLog,
    WindowsImageOptions,
    encode_password,
    guest_settings,
    render_answer_file,
    windows_files_dir,
)
from vmtest.images.windows11.answer import PROVISION_COMMAND, UNATTEND_NS, WCM_NS

NS = {"u": UNATTEND_NS, "wcm": WCM_NS}
PASSWORD = "Correct horse 42"
COMPONENT_ATTRIBUTES = {
    "processorArchitecture": "amd64",
    "publicKeyToken": "31bf3856ad364e35",
    "language": "neutral",
    "versionScope": "nonSxS",
}


def render(settings: AnswerSettings | None = None, password: str = PASSWORD) -> ET.Element:
    return ET.fromstring(render_answer_file(settings or AnswerSettings(), password))


def component(root: ET.Element, pass_name: str, name: str) -> ET.Element:
    found = root.findall(f"u:settings[@pass='{pass_name}']/u:component[@name='{name}']", NS)
    assert len(found) == 1, f"{name} in {pass_name}: {len(found)} found"
    return found[0]


def text(element: ET.Element, path: str) -> str:
    found = element.find(path, NS)
    assert found is not None, f"{path} missing"
    return found.text or ""


def commands(element: ET.Element, list_path: str, item: str, field: str) -> list[tuple[int, str]]:
    items = element.findall(f"{list_path}/u:{item}", NS)
    for entry in items:
        assert entry.get(f"{{{WCM_NS}}}action") == "add"
    return [(int(text(entry, "u:Order")), text(entry, f"u:{field}")) for entry in items]


def setup_commands(root: ET.Element) -> list[str]:
    setup = component(root, "windowsPE", "Microsoft-Windows-Setup")
    found = commands(setup, "u:RunSynchronous", "RunSynchronousCommand", "Path")
    assert [order for order, _ in found] == list(range(1, len(found) + 1))
    return [path for _, path in found]


def decode(value: str) -> str:
    return base64.b64decode(value).decode("utf-16-le")


# ------------------------------------------------------------------------------------------ document


def test_the_answer_file_is_well_formed_utf8_in_the_unattend_namespace() -> None:
    data = render_answer_file(AnswerSettings(), PASSWORD)
    assert data.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(data)
    assert root.tag == f"{{{UNATTEND_NS}}}unattend"
    assert [s.get("pass") for s in root.findall("u:settings", NS)] == [
        "windowsPE",
        "specialize",
        "oobeSystem",
    ]
    for element in root.iter(f"{{{UNATTEND_NS}}}component"):
        for name, value in COMPONENT_ATTRIBUTES.items():
            assert element.get(name) == value


def test_no_template_syntax_is_left() -> None:
    root = render(AnswerSettings(product_key="NPPR9-FWDCX-D2C8J-H872K-2YT43", tpm=True))
    for element in root.iter():
        assert not (element.text or "").count("{{")
        assert all(not name.startswith("{urn:vmtest:template}") for name in element.attrib)
        assert str(element.tag).startswith(f"{{{UNATTEND_NS}}}")


# ------------------------------------------------------------------------------------------ windowsPE


def test_windows_pe_partitions_disk_0_as_uefi_gpt() -> None:
    setup = component(render(), "windowsPE", "Microsoft-Windows-Setup")
    (disk,) = setup.findall("u:DiskConfiguration/u:Disk", NS)
    assert disk.get(f"{{{WCM_NS}}}action") == "add"
    assert text(disk, "u:DiskID") == "0"
    assert text(disk, "u:WillWipeDisk") == "true"
    created = [
        (
            text(p, "u:Order"),
            text(p, "u:Type"),
            p.findtext("u:Size", None, NS),
            p.findtext("u:Extend", None, NS),
        )
        for p in disk.findall("u:CreatePartitions/u:CreatePartition", NS)
    ]
    assert created == [("1", "EFI", "260", None), ("2", "MSR", "16", None), ("3", "Primary", None, "true")]
    modified = {
        text(p, "u:PartitionID"): (p.findtext("u:Format", None, NS), p.findtext("u:Letter", None, NS))
        for p in disk.findall("u:ModifyPartitions/u:ModifyPartition", NS)
    }
    assert modified == {"1": ("FAT32", None), "2": (None, None), "3": ("NTFS", "C")}
    install_to = setup.find("u:ImageInstall/u:OSImage/u:InstallTo", NS)
    assert install_to is not None
    assert (text(install_to, "u:DiskID"), text(install_to, "u:PartitionID")) == ("0", "3")


def test_the_edition_is_chosen_by_index_by_default() -> None:
    setup = component(render(), "windowsPE", "Microsoft-Windows-Setup")
    (meta,) = setup.findall("u:ImageInstall/u:OSImage/u:InstallFrom/u:MetaData", NS)
    assert (text(meta, "u:Key"), text(meta, "u:Value")) == ("/IMAGE/INDEX", "1")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (AnswerSettings(image_index=2), ("/IMAGE/INDEX", "2")),
        (
            AnswerSettings(image_name="Windows 11 Enterprise LTSC Evaluation"),
            ("/IMAGE/NAME", "Windows 11 Enterprise LTSC Evaluation"),
        ),
    ],
)
def test_the_edition_can_be_chosen_by_index_or_name(
    settings: AnswerSettings, expected: tuple[str, str]
) -> None:
    setup = component(render(settings), "windowsPE", "Microsoft-Windows-Setup")
    (meta,) = setup.findall("u:ImageInstall/u:OSImage/u:InstallFrom/u:MetaData", NS)
    assert (text(meta, "u:Key"), text(meta, "u:Value")) == expected


def test_name_and_index_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="by name or by index"):
        AnswerSettings(image_name="x", image_index=1)


def test_evaluation_media_get_no_product_key() -> None:
    setup = component(render(), "windowsPE", "Microsoft-Windows-Setup")
    key = setup.find("u:UserData/u:ProductKey", NS)
    assert key is not None
    assert key.find("u:Key", NS) is None
    assert text(key, "u:WillShowUI") == "OnError"
    assert text(setup, "u:UserData/u:AcceptEula") == "true"


def test_a_given_product_key_is_used() -> None:
    setup = component(render(AnswerSettings(product_key="NPPR9-FWDCX-D2C8J-H872K-2YT43")), "windowsPE",
                      "Microsoft-Windows-Setup")  # fmt: skip
    assert text(setup, "u:UserData/u:ProductKey/u:Key") == "NPPR9-FWDCX-D2C8J-H872K-2YT43"


def labconfig_values(paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        words = path.split()
        if words[:3] == ["reg", "add", r"HKLM\SYSTEM\Setup\LabConfig"]:
            assert words[words.index("/t") + 1] == "REG_DWORD" and words[words.index("/d") + 1] == "1"
            assert "/f" in words
            found.append(words[words.index("/v") + 1])
    return found


def test_without_tpm_labconfig_bypasses_tpm_secure_boot_and_ram_in_windows_pe() -> None:
    assert labconfig_values(setup_commands(render())) == [
        "BypassTPMCheck",
        "BypassSecureBootCheck",
        "BypassRAMCheck",
    ]


def test_with_a_tpm_only_the_tpm_bypass_goes_and_orders_stay_consecutive() -> None:
    paths = setup_commands(render(AnswerSettings(tpm=True)))  # checks Order = 1..n
    assert labconfig_values(paths) == ["BypassSecureBootCheck", "BypassRAMCheck"]
    assert AnswerSettings(tpm=True).labconfig == ("BypassSecureBootCheck", "BypassRAMCheck")


def test_setup_stays_offline() -> None:
    setup = component(render(), "windowsPE", "Microsoft-Windows-Setup")
    assert text(setup, "u:DynamicUpdate/u:Enable") == "false"
    assert text(setup, "u:DynamicUpdate/u:WillShowUI") == "Never"


def test_windows_pe_language() -> None:
    winpe = component(render(AnswerSettings(language="de-DE", input_locale="0407:00000407")), "windowsPE",
                      "Microsoft-Windows-International-Core-WinPE")  # fmt: skip
    assert text(winpe, "u:SetupUILanguage/u:UILanguage") == "de-DE"
    assert text(winpe, "u:InputLocale") == "0407:00000407"
    assert text(winpe, "u:UILanguage") == "de-DE"


# ------------------------------------------------------------------------------------------ specialize


def test_specialize_bypasses_the_network_requirement_and_names_the_computer() -> None:
    root = render(AnswerSettings(computer_name="BUILD-7"))
    deployment = component(root, "specialize", "Microsoft-Windows-Deployment")
    found = commands(deployment, "u:RunSynchronous", "RunSynchronousCommand", "Path")
    bypass = [path.split() for _, path in found if "BypassNRO" in path.split()]
    assert bypass == [
        ["reg", "add", r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\OOBE", "/v", "BypassNRO", "/t",
         "REG_DWORD", "/d", "1", "/f"]
    ]  # fmt: skip
    assert text(component(root, "specialize", "Microsoft-Windows-Shell-Setup"), "u:ComputerName") == "BUILD-7"


def test_each_pass_echoes_its_marker_on_com2() -> None:
    root = render()
    pe = setup_commands(root)[0]
    deployment = component(root, "specialize", "Microsoft-Windows-Deployment")
    specialize = commands(deployment, "u:RunSynchronous", "RunSynchronousCommand", "Path")[0][1]
    shell = component(root, "oobeSystem", "Microsoft-Windows-Shell-Setup")
    logon = commands(shell, "u:FirstLogonCommands", "SynchronousCommand", "CommandLine")[0][1]
    for command, pass_name in ((pe, "windowsPE"), (specialize, "specialize"), (logon, "firstlogon")):
        assert command == f'cmd.exe /d /c "echo {MARKERS.setup} {pass_name}>COM2 2>nul & exit /b 0"'


# ------------------------------------------------------------------------------------------ oobeSystem


def test_oobe_is_skipped() -> None:
    shell = component(render(), "oobeSystem", "Microsoft-Windows-Shell-Setup")
    flags = (
        "HideEULAPage",
        "HideLocalAccountScreen",
        "HideOEMRegistrationScreen",
        "HideOnlineAccountScreens",
        "HideWirelessSetupInOOBE",
        "SkipUserOOBE",
        "SkipMachineOOBE",
    )
    for flag in flags:
        assert text(shell, f"u:OOBE/u:{flag}") == "true", flag
    assert text(shell, "u:OOBE/u:ProtectYourPC") == "3"
    assert text(shell, "u:TimeZone") == "UTC"


def test_one_local_administrator_with_an_encoded_password() -> None:
    shell = component(render(AnswerSettings(user="tester")), "oobeSystem", "Microsoft-Windows-Shell-Setup")
    (account,) = shell.findall("u:UserAccounts/u:LocalAccounts/u:LocalAccount", NS)
    assert account.get(f"{{{WCM_NS}}}action") == "add"
    assert text(account, "u:Name") == "tester"
    assert text(account, "u:Group") == "Administrators"
    assert text(account, "u:Password/u:PlainText") == "false"
    assert decode(text(account, "u:Password/u:Value")) == PASSWORD + "Password"
    # The built-in Administrator stays disabled: no password is set for it.
    assert shell.find("u:UserAccounts/u:AdministratorPassword", NS) is None


def test_autologon_as_that_administrator() -> None:
    shell = component(render(AnswerSettings(user="tester")), "oobeSystem", "Microsoft-Windows-Shell-Setup")
    assert text(shell, "u:AutoLogon/u:Enabled") == "true"
    assert text(shell, "u:AutoLogon/u:Username") == "tester"
    assert int(text(shell, "u:AutoLogon/u:LogonCount")) > 1000
    assert text(shell, "u:AutoLogon/u:Password/u:PlainText") == "false"
    assert decode(text(shell, "u:AutoLogon/u:Password/u:Value")) == PASSWORD + "Password"


def test_first_logon_runs_the_provisioning_script_from_the_answer_cd() -> None:
    shell = component(render(), "oobeSystem", "Microsoft-Windows-Shell-Setup")
    found = commands(shell, "u:FirstLogonCommands", "SynchronousCommand", "CommandLine")
    assert [order for order, _ in found] == [1, 2]
    assert found[1][1] == PROVISION_COMMAND
    words = PROVISION_COMMAND.split()
    assert words[0] == "powershell.exe"
    assert words[words.index("-ExecutionPolicy") + 1] == "Bypass"
    script = PROVISION_COMMAND[PROVISION_COMMAND.index('"') :]  # the -Command argument, one quoted word
    assert script.startswith('"Get-PSDrive -PSProvider FileSystem') and script.endswith('"')
    assert "Join-Path $_.Root 'vmtest\\provision.ps1'" in script  # on whichever drive holds the ISO
    assert "-Source (Join-Path $_.Root 'vmtest')" in script
    for entry in shell.findall("u:FirstLogonCommands/u:SynchronousCommand", NS):
        assert text(entry, "u:RequiresUserInput") == "false"


def test_no_automatic_device_encryption() -> None:
    encryption = component(render(), "oobeSystem", "Microsoft-Windows-SecureStartup-FilterDriver")
    assert text(encryption, "u:PreventDeviceEncryption") == "true"


# ------------------------------------------------------------------------------------------ escaping


def test_special_characters_in_user_and_password_are_escaped() -> None:
    user = "o'brien&co"  # ' and & are allowed in Windows account names
    password = "p<a>\"s&s]]>'\u00e9\u4e2d"
    data = render_answer_file(AnswerSettings(user=user), password)
    root = ET.fromstring(data)  # would fail if anything broke the markup
    shell = component(root, "oobeSystem", "Microsoft-Windows-Shell-Setup")
    assert text(shell, "u:UserAccounts/u:LocalAccounts/u:LocalAccount/u:Name") == user
    assert text(shell, "u:AutoLogon/u:Username") == user
    assert text(component(root, "windowsPE", "Microsoft-Windows-Setup"), "u:UserData/u:FullName") == user
    assert decode(text(shell, "u:AutoLogon/u:Password/u:Value")) == password + "Password"
    assert b"o'brien&amp;co" in data and b"o'brien&co" not in data  # escaped by the serializer
    assert password.encode() not in data  # never in clear


def test_the_image_name_is_escaped_too() -> None:
    name = 'Windows <11> & "more"'
    setup = component(render(AnswerSettings(image_name=name)), "windowsPE", "Microsoft-Windows-Setup")
    assert text(setup, "u:ImageInstall/u:OSImage/u:InstallFrom/u:MetaData/u:Value") == name


@pytest.mark.parametrize("user", ["a<b", "x" * 21, "a@b", "...", "tab\there", "50%", "NONE"])
def test_user_names_windows_refuses_are_refused(user: str) -> None:
    # The unattend reference for LocalAccount/Name: no "/[]:|<>+=;,?*%@, and NONE is restricted.
    with pytest.raises(ConfigError, match="user"):
        AnswerSettings(user=user)


@pytest.mark.parametrize(("user", "computer"), [("build-7", "BUILD-7"), ("VMTEST-WIN11", "VMTEST-WIN11")])
def test_a_user_named_like_the_computer_is_refused(user: str, computer: str) -> None:
    with pytest.raises(ConfigError, match="computer's name too"):
        AnswerSettings(user=user, computer_name=computer)
    AnswerSettings(user=user + "x", computer_name=computer)


def test_characters_xml_cannot_carry_are_refused() -> None:
    with pytest.raises(ConfigError, match="XML cannot carry"):
        AnswerSettings(image_name="bad\x01name")


@pytest.mark.parametrize("password", ["", "line\n", "bell\x07"])
def test_empty_or_control_character_passwords_are_refused(password: str) -> None:
    with pytest.raises(ConfigError, match="password"):
        render_answer_file(AnswerSettings(), password)


def test_password_encoding_matches_published_answer_files() -> None:
    # windows11-vm.md §2.6: rgl/windows-vagrant's and dockur/windows's values decode to these.
    assert encode_password("vagrant", "Password") == "dgBhAGcAcgBhAG4AdABQAGEAcwBzAHcAbwByAGQA"
    assert encode_password("vagrant", "AdministratorPassword") == (
        "dgBhAGcAcgBhAG4AdABBAGQAbQBpAG4AaQBzAHQAcgBhAHQAbwByAFAAYQBzAHMAdwBvAHIAZAA="
    )
    assert encode_password("admin", "Password") == "YQBkAG0AaQBuAFAAYQBzAHMAdwBvAHIAZAA="


def test_unknown_placeholders_and_conditions_in_a_template_are_errors(tmp_path: Path) -> None:
    template = tmp_path / "t.xml"
    template.write_text(f'<unattend xmlns="{UNATTEND_NS}"><A>{{{{nope}}}}</A></unattend>')
    with pytest.raises(ImageError, match="nope"):
        render_answer_file(AnswerSettings(), PASSWORD, template=template)
    template.write_text(
        f'<unattend xmlns="{UNATTEND_NS}" xmlns:v="urn:vmtest:template"><A v:if="x"/></unattend>'
    )
    with pytest.raises(ImageError, match="condition"):
        render_answer_file(AnswerSettings(), PASSWORD, template=template)


# ------------------------------------------------------------------------------------------ the scripts


def test_settings_for_the_scripts_hold_the_markers_and_no_secret(tmp_path: Path) -> None:
    options = WindowsImageOptions(iso=tmp_path / "w.iso", openssh_zip=tmp_path / "o.zip", kernel_debug=False)
    settings = guest_settings(options, "ssh-ed25519 AAAA vmtest-client")
    assert settings["markers"]["ready"] == "VMTEST-GUEST-READY"
    assert settings["markers"]["done"] == MARKERS.done
    assert settings["kernel_debug"] == {"enabled": False, "debugport": 1, "baudrate": 115200}
    # DbgPrintEx(DPFLTR_IHVDRIVER_ID, INFO) is filtered unless IHVDRIVER is opened too (issue 17.7).
    assert settings["debug_print_filter"] == {"DEFAULT": 0xF, "IHVDRIVER": 0xF}
    assert settings["openssh"]["enabled"] is True
    assert settings["openssh"]["authorized_key"] == "ssh-ed25519 AAAA vmtest-client"
    assert "password" not in json.dumps(settings).lower()


def test_the_scripts_print_every_marker_the_builder_waits_for() -> None:
    # The marker texts live in settings.json; the scripts must use each one by its key.
    files = windows_files_dir()
    provision = (files / "provision.ps1").read_text()
    ready = (files / "ready.ps1").read_text()
    for key in ("step", "warning", "failed", "host_key", "os_info", "licence", "done"):
        assert f"$markers.{key}" in provision or f"$($markers.{key})" in provision, key
    assert "$settings.markers.ready" in ready
    assert "Write-Com2" in (files / "common.ps1").read_text()


# ------------------------------------------------------------------------------------------ markers


def test_the_provision_log_reads_markers_behind_serial_noise() -> None:
    log = ProvisionLog()
    assert log.feed("\x1b[2J BdsDxe: loading Boot0001") is None
    assert log.feed(f"\x1b[0m{MARKERS.setup} windowsPE") == "Setup: windowsPE pass"
    assert log.feed(f"{MARKERS.step} 2/13: enable test signing\r") == "provisioning 2/13: enable test signing"
    assert log.passes == ["windowsPE"] and log.steps == ["2/13: enable test signing"]
    assert log.last == "provisioning step 2/13: enable test signing"
    assert not log.done and log.failure is None


def test_the_provision_log_keeps_host_key_os_and_licence() -> None:
    log = ProvisionLog()
    log.feed(f"{MARKERS.host_key} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==")
    log.feed(
        f'{MARKERS.os_info} {{"caption": "Microsoft Windows 11 Enterprise Evaluation", "build": "26100"}}'
    )
    log.feed(f'{MARKERS.licence} {{"description": "TIMEBASED_EVAL channel", "grace_minutes": 129600}}')
    log.feed(MARKERS.done)
    assert log.host_key == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA=="
    assert log.os_info == {"caption": "Microsoft Windows 11 Enterprise Evaluation", "build": "26100"}
    assert log.licence is not None and log.licence["grace_minutes"] == 129600
    assert log.done and log.warnings == []


def test_the_provision_log_records_failures_and_bad_lines_as_warnings() -> None:
    log = ProvisionLog()
    log.feed(f"{MARKERS.host_key} ssh-rsa not-base64!")
    log.feed(f"{MARKERS.licence} {{broken")
    log.feed(f"{MARKERS.warning} Defender: Tamper Protection")
    assert log.host_key is None and log.licence is None
    assert len(log.warnings) == 3
    log.feed(f"{MARKERS.failed} enable test signing: protected by Secure Boot policy")
    assert log.failure == "enable test signing: protected by Secure Boot policy"
    assert log.feed("VMTEST-SOMETHING-ELSE x") is None
