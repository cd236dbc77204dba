<#
  vmtest readiness, at every boot: the scheduled task "vmtest-ready" (at startup, as SYSTEM) runs this
  from C:\vmtest. It waits until the remote-access services listen (sshd on TCP 22 when OpenSSH is
  installed, SMB on TCP 445), starting sshd if it is not running, then prints the ready marker
  (VMTEST-GUEST-READY) on COM2. After ready_wait_seconds it prints a warning line naming the ports
  that do not listen, and the marker anyway: the host then checks the SSH banner itself.
  A RAM snapshot restore is not a boot: no marker then.
#>
$ErrorActionPreference = 'Continue'
$root = Split-Path -Parent $MyInvocation.MyCommand.Path
. (Join-Path $root 'common.ps1')
$settings = Read-VmtestSettings (Join-Path $root 'settings.json')

function Test-Listening {
    param([int]$Port)
    $listeners = Get-NetTCPConnection -State Listen -LocalPort $Port -ErrorAction SilentlyContinue
    return ($null -ne $listeners)
}

$ports = @(445)
if ($settings.openssh.enabled) { $ports += 22 }
$deadline = (Get-Date).AddSeconds([int]$settings.ready_wait_seconds)
$missing = @($ports)
while ((Get-Date) -lt $deadline) {
    if ($settings.openssh.enabled) {
        $sshd = Get-Service -Name 'sshd' -ErrorAction SilentlyContinue
        if ($null -ne $sshd -and $sshd.Status -eq 'Stopped') {
            Start-Service -Name 'sshd' -ErrorAction SilentlyContinue
        }
    }
    $missing = @($ports | Where-Object { -not (Test-Listening $_) })
    if ($missing.Count -eq 0) { break }
    Start-Sleep -Seconds 1
}
if ($missing.Count -gt 0) {
    Write-Com2 "$($settings.markers.warning) not listening after $($settings.ready_wait_seconds)s: TCP $($missing -join ', ')"
}
Write-Com2 $settings.markers.ready
