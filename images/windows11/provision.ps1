<#
  vmtest provisioning of the Windows 11 golden image. Runs once, elevated, as the second
  FirstLogonCommand of the answer file, from the answer CD (-Source is its vmtest folder). Windows
  PowerShell 5.1.

  Every step prints "VMTEST-PROVISION-STEP i/n: what" on COM2; a failed step prints
  "VMTEST-PROVISION-FAILED what: why" and stops (the VM stays up for a screenshot); a step that may fail
  without harm prints "VMTEST-WARN ..." and the script goes on. At the end it schedules a shutdown and
  prints "VMTEST-PROVISION-DONE"; the host waits for the power-off and seals the disk. The marker texts
  come from settings.json, written by vmtest/images/windows11/answer_iso.py. Settings: windows11-vm.md
  §2.8, §2.9.
  The transcript is kept in C:\vmtest\provision.log.
#>
param([Parameter(Mandatory = $true)][string]$Source)

$ErrorActionPreference = 'Stop'
. (Join-Path $Source 'common.ps1')
$settings = Read-VmtestSettings (Join-Path $Source 'settings.json')
$markers = $settings.markers
$Target = $settings.target
New-Item -ItemType Directory -Force -Path $Target | Out-Null
Start-Transcript -LiteralPath (Join-Path $Target 'provision.log') -Append | Out-Null

function Invoke-Native {
    # Run a program; throw with its output when it exits non-zero. (Native stderr must not become a
    # terminating error under ErrorActionPreference=Stop, hence Continue inside.)
    param([Parameter(Mandatory = $true)][string]$FilePath, [string[]]$ArgumentList = @())
    $ErrorActionPreference = 'Continue'
    $output = (& $FilePath @ArgumentList 2>&1 | Out-String)
    $code = $LASTEXITCODE
    Write-Host $output
    if ($code -ne 0) {
        throw "$FilePath $($ArgumentList -join ' ') exited with $($code): $(Get-OneLine $output)"
    }
}

function Set-RegistryValue {
    param(
        [Parameter(Mandatory = $true)][string]$Path,
        [Parameter(Mandatory = $true)][string]$Name,
        [Parameter(Mandatory = $true)]$Value,
        [string]$Type = 'DWord'
    )
    if (-not (Test-Path -LiteralPath $Path)) { New-Item -Path $Path -Force | Out-Null }
    New-ItemProperty -LiteralPath $Path -Name $Name -Value $Value -PropertyType $Type -Force | Out-Null
}

function Add-InboundRule {
    # An inbound TCP rule for every network profile, so the network's category does not matter.
    param([string]$Name, [string]$DisplayName, [int]$Port)
    if ($null -eq (Get-NetFirewallRule -Name $Name -ErrorAction SilentlyContinue)) {
        New-NetFirewallRule -Name $Name -DisplayName $DisplayName -Direction Inbound -Protocol TCP `
            -LocalPort $Port -Action Allow -Profile Any | Out-Null
    }
}

$steps = New-Object System.Collections.ArrayList

[void]$steps.Add(@{ Name = "copy the vmtest files to $Target"; Soft = $false; Action = {
    foreach ($name in @('common.ps1', 'ready.ps1', 'settings.json')) {
        Copy-Item -LiteralPath (Join-Path $Source $name) -Destination $Target -Force
    }
    $tools = Join-Path $Source 'tools'
    if (Test-Path -LiteralPath $tools) {
        New-Item -ItemType Directory -Force -Path (Join-Path $Target 'tools') | Out-Null
        Copy-Item -Path (Join-Path $tools '*') -Destination (Join-Path $Target 'tools') -Recurse -Force
    }
} })

[void]$steps.Add(@{ Name = 'enable test signing (bcdedit /set testsigning on)'; Soft = $false; Action = {
    # Refused with "protected by Secure Boot policy" (0x1145) if Secure Boot is on (§1.14).
    Invoke-Native 'bcdedit.exe' @('/set', 'testsigning', 'on')
} })

if ($settings.kernel_debug.enabled) {
    [void]$steps.Add(@{ Name = "kernel debugging on COM$($settings.kernel_debug.debugport)"; Soft = $false; Action = {
        Invoke-Native 'bcdedit.exe' @('/debug', 'on')
        Invoke-Native 'bcdedit.exe' @('/dbgsettings', 'serial',
            "debugport:$($settings.kernel_debug.debugport)", "baudrate:$($settings.kernel_debug.baudrate)")
    } })
} else {
    [void]$steps.Add(@{ Name = 'kernel debugging off'; Soft = $false; Action = {
        Invoke-Native 'bcdedit.exe' @('/debug', 'off')
    } })
}

[void]$steps.Add(@{ Name = 'show every DbgPrint level (Debug Print Filter DEFAULT, IHVDRIVER)'; Soft = $false; Action = {
    # §2.8, §4.1: DbgPrint is component DEFAULT, DbgPrintEx(DPFLTR_IHVDRIVER_ID, ...) component IHVDRIVER;
    # one value per component, read at boot ("Reading and Filtering Debugging Messages", Microsoft Learn).
    foreach ($component in $settings.debug_print_filter.PSObject.Properties) {
        Set-RegistryValue 'HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager\Debug Print Filter' `
            $component.Name ([int]$component.Value)
    }
} })

[void]$steps.Add(@{ Name = 'crash dump settings'; Soft = $false; Action = {
    $key = 'HKLM:\SYSTEM\CurrentControlSet\Control\CrashControl'
    Set-RegistryValue $key 'CrashDumpEnabled' ([int]$settings.crash_dump.type)
    if ($settings.crash_dump.filter_pages) { Set-RegistryValue $key 'FilterPages' 1 }
    Set-RegistryValue $key 'AutoReboot' ([int]$settings.crash_dump.auto_reboot)
    Set-RegistryValue $key 'NMICrashDump' 1
    Set-RegistryValue $key 'Overwrite' 1
    Set-RegistryValue $key 'AlwaysKeepMemoryDump' 1
} })

[void]$steps.Add(@{ Name = 'SMB for PsExec (firewall TCP 445, LocalAccountTokenFilterPolicy=1)'; Soft = $false; Action = {
    # pypsexec README "Remote Host Requirements" (§2.8): ADMIN$ over SMB with an unfiltered token.
    Set-RegistryValue 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System' 'LocalAccountTokenFilterPolicy' 1
    Add-InboundRule 'vmtest-smb-in' 'vmtest: SMB (TCP 445)' 445
    Enable-NetFirewallRule -Name 'FPS-SMB-In-TCP' -ErrorAction SilentlyContinue
    Set-Service -Name 'LanmanServer' -StartupType Automatic
} })

[void]$steps.Add(@{ Name = 'network category private'; Soft = $false; Action = {
    # §1.7: QEMU's user network is "unidentified", hence Public. Policy for unidentified networks
    # (AutoHCK's key): Category=1 (private); then the current profiles.
    Set-RegistryValue ('HKLM:\SOFTWARE\Policies\Microsoft\Windows NT\CurrentVersion\NetworkList\Signatures\' +
        '010103000F0000F0010000000F0000F0C967A3643C3AD745950DA7859209176EF5B87C875FA20DF21951640E807D7C24') 'Category' 1
    foreach ($connection in @(Get-NetConnectionProfile -ErrorAction SilentlyContinue)) {
        try {
            Set-NetConnectionProfile -InterfaceIndex $connection.InterfaceIndex -NetworkCategory Private
        } catch {
            Write-Com2 "$($markers.warning) network $($connection.Name) stays $($connection.NetworkCategory): $(Get-OneLine $_.Exception.Message)"
        }
    }
} })

if ($settings.openssh.enabled) {
    [void]$steps.Add(@{ Name = "OpenSSH server from $($settings.openssh.zip)"; Soft = $false; Action = {
        # §2.9: the Win32-OpenSSH release zip, offline (rgl/windows-vagrant provision-openssh.ps1).
        $unpacked = Join-Path $env:TEMP 'vmtest-openssh'
        if (Test-Path -LiteralPath $unpacked) { Remove-Item -LiteralPath $unpacked -Recurse -Force }
        Expand-Archive -LiteralPath (Join-Path $Source $settings.openssh.zip) -DestinationPath $unpacked -Force
        $sshdExe = Get-ChildItem -LiteralPath $unpacked -Recurse -Filter 'sshd.exe' | Select-Object -First 1
        if ($null -eq $sshdExe) { throw "$($settings.openssh.zip) holds no sshd.exe" }
        $installDir = Join-Path $env:ProgramFiles 'OpenSSH'
        New-Item -ItemType Directory -Force -Path $installDir | Out-Null
        Copy-Item -Path (Join-Path $sshdExe.DirectoryName '*') -Destination $installDir -Recurse -Force
        Invoke-Native 'powershell.exe' @('-NoLogo', '-NoProfile', '-ExecutionPolicy', 'Bypass', '-File',
            (Join-Path $installDir 'install-sshd.ps1'))
        $machinePath = [Environment]::GetEnvironmentVariable('Path', 'Machine')
        if (($machinePath -split ';') -notcontains $installDir) {
            [Environment]::SetEnvironmentVariable('Path', "$machinePath;$installDir", 'Machine')
        }
        # vmtest quotes remote commands for cmd.exe (§5.1): make it the default shell explicitly.
        Set-RegistryValue 'HKLM:\SOFTWARE\OpenSSH' 'DefaultShell' "$env:SystemRoot\System32\cmd.exe" 'String'
        Invoke-Native 'sc.exe' @('config', 'sshd', 'start=', $settings.openssh.start_type)
        Invoke-Native 'sc.exe' @('failure', 'sshd', 'reset=', '86400', 'actions=', 'restart/5000/restart/5000/restart/5000')
        Add-InboundRule 'vmtest-ssh-in' 'vmtest: OpenSSH Server (TCP 22)' 22
        Start-Service -Name 'sshd'
        # The first start creates %ProgramData%\ssh, sshd_config and the host keys; older releases
        # need ssh-keygen -A (unconfirmed which releases do what, so both).
        $sshData = Join-Path $env:ProgramData 'ssh'
        $hostKey = Join-Path $sshData 'ssh_host_ed25519_key.pub'
        $until = (Get-Date).AddSeconds(60)
        while (-not (Test-Path -LiteralPath $hostKey) -and (Get-Date) -lt $until) { Start-Sleep -Seconds 1 }
        if (-not (Test-Path -LiteralPath $hostKey)) {
            Push-Location $sshData
            try { Invoke-Native (Join-Path $installDir 'ssh-keygen.exe') @('-A') } finally { Pop-Location }
            Restart-Service -Name 'sshd'
        }
        if (-not (Test-Path -LiteralPath $hostKey)) { throw "sshd made no ed25519 host key ($hostKey)" }
        $fixer = Join-Path $installDir 'FixHostFilePermissions.ps1'
        if (Test-Path -LiteralPath $fixer) {
            try { & $fixer -Confirm:$false } catch {
                Write-Com2 "$($markers.warning) FixHostFilePermissions.ps1: $(Get-OneLine $_.Exception.Message)"
            }
        }
        # Administrators log in with %ProgramData%\ssh\administrators_authorized_keys, which must only
        # grant Administrators and SYSTEM (by SID, so localized names do not matter) (§5.1).
        $authorized = Join-Path $sshData 'administrators_authorized_keys'
        Set-Content -LiteralPath $authorized -Value $settings.openssh.authorized_key -Encoding Ascii
        Invoke-Native 'icacls.exe' @($authorized, '/inheritance:r', '/grant', '*S-1-5-32-544:F', '/grant', '*S-1-5-18:F')
        Restart-Service -Name 'sshd'
        $fields = (Get-Content -LiteralPath $hostKey -Raw).Trim() -split '\s+'
        Write-Com2 "$($markers.host_key) $($fields[0]) $($fields[1])"
    } })
}

[void]$steps.Add(@{ Name = 'Windows Update off'; Soft = $true; Action = {
    $au = 'HKLM:\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU'
    Set-RegistryValue $au 'NoAutoUpdate' 1
    Set-RegistryValue $au 'AUOptions' 2
    Set-RegistryValue 'HKLM:\SOFTWARE\Policies\Microsoft\Windows\DeliveryOptimization' 'DODownloadMode' 0
    Stop-Service -Name 'wuauserv' -Force -ErrorAction SilentlyContinue
    Set-Service -Name 'wuauserv' -StartupType Disabled
} })

[void]$steps.Add(@{ Name = 'Defender real-time scanning off'; Soft = $true; Action = {
    # Tamper Protection may undo the preference; the exclusion is the part that sticks (§2.8).
    Set-RegistryValue 'HKLM:\SOFTWARE\Policies\Microsoft\Windows Defender\Real-Time Protection' 'DisableRealtimeMonitoring' 1
    Set-MpPreference -DisableRealtimeMonitoring $true -ExclusionPath @('C:\')
} })

[void]$steps.Add(@{ Name = 'sleep and hibernation off'; Soft = $false; Action = {
    Invoke-Native 'powercfg.exe' @('/hibernate', 'off')
    foreach ($setting in @('standby-timeout-ac', 'hibernate-timeout-ac', 'monitor-timeout-ac', 'disk-timeout-ac')) {
        Invoke-Native 'powercfg.exe' @('/change', $setting, '0')
    }
    Set-RegistryValue 'HKLM:\SYSTEM\CurrentControlSet\Control\Power' 'HibernateEnabled' 0
    Set-RegistryValue 'HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager\Power' 'HiberbootEnabled' 0
} })

[void]$steps.Add(@{ Name = "ready marker at every boot (task $($settings.ready_task))"; Soft = $false; Action = {
    $arguments = "-NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$(Join-Path $Target 'ready.ps1')`""
    $action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument $arguments
    $trigger = New-ScheduledTaskTrigger -AtStartup
    $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    $options = New-ScheduledTaskSettingsSet -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
        -ExecutionTimeLimit (New-TimeSpan -Minutes 30)
    Register-ScheduledTask -TaskName $settings.ready_task -Action $action -Trigger $trigger `
        -Principal $principal -Settings $options -Force | Out-Null
} })

[void]$steps.Add(@{ Name = 'report the Windows version and licence'; Soft = $true; Action = {
    $os = Get-CimInstance -ClassName Win32_OperatingSystem
    $osInfo = [ordered]@{
        caption = [string]$os.Caption
        version = [string]$os.Version
        build = [string]$os.BuildNumber
        install_date = $os.InstallDate.ToUniversalTime().ToString('o')
    }
    Write-Com2 "$($markers.os_info) $(ConvertTo-Json -InputObject $osInfo -Compress)"
    # The Windows licence (application id of Windows); GracePeriodRemaining is in minutes.
    $filter = "ApplicationID = '55c92734-d682-4d71-983e-d6ec3f16059f' AND PartialProductKey IS NOT NULL"
    $licence = Get-CimInstance -ClassName SoftwareLicensingProduct -Filter $filter | Select-Object -First 1
    if ($null -ne $licence) {
        $licenceInfo = [ordered]@{
            name = [string]$licence.Name
            description = [string]$licence.Description
            license_status = [int]$licence.LicenseStatus
            grace_minutes = [int64]$licence.GracePeriodRemaining
        }
        Write-Com2 "$($markers.licence) $(ConvertTo-Json -InputObject $licenceInfo -Compress)"
    }
} })

$total = $steps.Count
$index = 0
foreach ($step in $steps) {
    $index++
    Write-Com2 "$($markers.step) $index/$($total): $($step.Name)"
    try {
        & $step.Action
    } catch {
        $why = Get-OneLine $_.Exception.Message
        if ($step.Soft) {
            Write-Com2 "$($markers.warning) $($step.Name): $why"
        } else {
            Write-Com2 "$($markers.failed) $($step.Name): $why"
            Stop-Transcript | Out-Null
            exit 1
        }
    }
}

# Seal: shut down shortly (QEMU exits when the guest powers off), then tell the host it is coming.
try {
    Invoke-Native 'shutdown.exe' @('/s', '/t', '10', '/f', '/d', 'p:4:1', '/c', 'vmtest: sealing the golden image')
} catch {
    Write-Com2 "$($markers.failed) shutdown: $(Get-OneLine $_.Exception.Message)"
    Stop-Transcript | Out-Null
    exit 1
}
Write-Com2 $markers.done
Stop-Transcript | Out-Null
exit 0
