#!/usr/bin/env bash
# Prepares a Debian or Ubuntu machine for vmtest: system packages, a virtualenv with vmtest in it,
# and the Linux self-test guest image. Safe to run again: it only does what is missing.
#   ./setup.sh          what `vmtest run` needs
#   ./setup.sh --dev    also what vmtest's own test suite needs
set -euo pipefail
cd "$(dirname "$0")"

runtime_packages=(
  qemu-system-x86 qemu-utils            # the VM and its overlays
  busybox-static dropbear-bin openssh-sftp-server cpio kmod e2fsprogs   # the Linux self-test guest
  gcc make libc6-dev                     # kernel modules built against the guest's headers
  python3-venv python3-pip
)
dev_packages=(
  openssh-server openssh-client          # a real sshd peer for the SSH transport tests
  shellcheck                             # lints ci/runner/setup.sh and the workflows' scripts
  samba                                  # a real smbd peer for the SMB file-copy tests
  chromium                               # renders the HTML report in a test
  xorriso ovmf swtpm                     # the Windows image builder's answer ISO and firmware, tested here
  strace                                 # watches QEMU's network calls in the network-isolation fault test
)

packages=("${runtime_packages[@]}")
if [[ "${1:-}" == "--dev" ]]; then
  packages+=("${dev_packages[@]}")
fi

as_root=()
if [[ "$(id -u)" -ne 0 ]]; then
  as_root=(sudo)
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
# The guest kernel and its headers are fetched with `apt-get download`, which needs package lists.
if [[ ${#missing[@]} -gt 0 ]] || ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  echo "setup: installing ${missing[*]:-(package lists only)}"
  "${as_root[@]}" apt-get update -q
  if [[ ${#missing[@]} -gt 0 ]]; then
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

# When vmtest runs as root, QEMU and swtpm run as this dedicated system user (docs/SECURITY.md).
if ! getent passwd vmtest >/dev/null; then
  "${as_root[@]}" useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vmtest
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
extras=""
if [[ "${1:-}" == "--dev" ]]; then
  extras="[dev]"
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"

.venv/bin/vmtest image build linux
