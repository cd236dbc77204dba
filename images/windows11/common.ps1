# Shared by provision.ps1 and ready.ps1 (dot-sourced): the settings vmtest wrote, and COM2, the text
# channel to the host. COM1 belongs to the kernel debugger (bcdedit /dbgsettings serial debugport:1).
# Windows PowerShell 5.1.

function Read-VmtestSettings {
    param([Parameter(Mandatory = $true)][string]$Path)
    # settings.json holds no secret: markers, feature switches, file names, the client's public key.
    return (Get-Content -LiteralPath $Path -Raw -Encoding UTF8 | ConvertFrom-Json)
}

function Write-Com2 {
    # One line on COM2. The port is opened per line and shared with the ready task, so an open that
    # fails (port busy) is retried for a while; the line also goes to the transcript.
    param([Parameter(Mandatory = $true)][string]$Text)
    Write-Host $Text
    for ($attempt = 1; $attempt -le 50; $attempt++) {
        $port = $null
        try {
            $port = New-Object System.IO.Ports.SerialPort 'COM2', 115200, 'None', 8, 'One'
            $port.Encoding = [System.Text.Encoding]::UTF8
            $port.NewLine = "`r`n"
            $port.WriteTimeout = 5000
            $port.Open()
            $port.WriteLine($Text)
            $port.BaseStream.Flush()
            return
        } catch {
            Start-Sleep -Milliseconds 200
        } finally {
            if ($null -ne $port) { $port.Dispose() }
        }
    }
    Write-Warning "could not write to COM2: $Text"
}

function Get-OneLine {
    # An exception message on one line (markers are line-based).
    param([string]$Text)
    return (($Text -replace '[\r\n]+', ' ').Trim())
}
