#!/usr/bin/env bash
# Prepares a Debian or Ubuntu machine as a self-hosted GitHub Actions runner for vmtest: packages, KVM
# access for the runner user, the image cache (root-owned images the jobs can read but not change), the
# golden Windows image folder, the runner's policy file, vmtest in a virtualenv, and finally
# `vmtest doctor`. Run it again at any time: it only does what is missing.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: sudo ci/runner/setup.sh [OPTIONS]

Prepares this Debian/Ubuntu machine to run vmtest jobs as a self-hosted GitHub Actions runner.

Options:
  --user NAME       the user the runner service runs as (default: the user who ran sudo)
  --cache DIR       the image cache, VMTEST_CACHE (default: /var/cache/vmtest)
  --image FOLDER    install this Windows image folder (made by `vmtest image build windows11`: image.json,
                    disk.qcow2, efivars.fd, keys, TPM state) as DIR/windows11/<name>, verify every
                    file against the sha256 image.json records, and point DIR/windows11/current at it
  --venv DIR        where vmtest is installed (default: /opt/vmtest/venv)
  --vmtest SOURCE   what pip installs vmtest from (default: the vmtest source tree holding this script)
  --config FILE     the vmtest configuration the final `vmtest doctor` checks (default: vmtest's); if
                    it reads ${VMTEST_WINDOWS_PASSWORD}, run with
                    sudo --preserve-env=VMTEST_WINDOWS_PASSWORD (sudo drops the environment)
  --allow-host-programs
                    let configurations set machine.qemu and machine.extra_args (they run programs
                    on this host; refused by default: /etc/vmtest/policy.yaml)
  -h, --help        show this help

Afterwards restart the runner service, so that it runs with the kvm group.
EOF
}

die() {
  echo "setup: error: $*" >&2
  exit 2
}

note() {
  echo "setup: $*"
}

script_dir=$(cd "$(dirname "$0")" && pwd)
runner_user=${SUDO_USER:-}
cache=/var/cache/vmtest
image=""
venv=/opt/vmtest/venv
source_tree=$(cd "$script_dir/../.." && pwd)
vmtest_source=""
config=""
allow_host_programs=false
policy=/etc/vmtest/policy.yaml

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --user) runner_user=${2:?--user needs a NAME}; shift 2 ;;
    --cache) cache=${2:?--cache needs a DIR}; shift 2 ;;
    --image) image=${2:?--image needs a FOLDER}; shift 2 ;;
    --venv) venv=${2:?--venv needs a DIR}; shift 2 ;;
    --vmtest) vmtest_source=${2:?--vmtest needs a SOURCE}; shift 2 ;;
    --config) config=${2:?--config needs a FILE}; shift 2 ;;
    --allow-host-programs) allow_host_programs=true; shift ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

# --- Preconditions ------------------------------------------------------------------------------------

os_id=$(sed -n 's/^ID=//p' /etc/os-release 2>/dev/null | tr -d '"')
os_id=${os_id:-unknown}
if [[ "$os_id" != debian && "$os_id" != ubuntu ]]; then
  die "this script supports Debian and Ubuntu only (this is '$os_id'); install the equivalents of its packages by hand"
fi
[[ "$(id -u)" -eq 0 ]] || die "run as root (sudo $0 ...)"
[[ -n "$runner_user" ]] || die "name the runner's user with --user NAME"
id "$runner_user" >/dev/null 2>&1 || die "user '$runner_user' does not exist"
if [[ -z "$vmtest_source" ]]; then
  [[ -f "$source_tree/pyproject.toml" && -d "$source_tree/vmtest" ]] \
    || die "$source_tree is not a vmtest source tree; give --vmtest SOURCE"
  vmtest_source=$source_tree
fi
if [[ -n "$image" ]]; then
  [[ -d "$image" && -f "$image/image.json" ]] \
    || die "--image $image is not an image folder made by \`vmtest image build windows11\` (no image.json)"
  image=$(realpath "$image")
fi
if [[ -n "$config" ]] && grep -q 'VMTEST_WINDOWS_PASSWORD' "$config" && [[ -z "${VMTEST_WINDOWS_PASSWORD:-}" ]]; then
  die "$config reads VMTEST_WINDOWS_PASSWORD, which is not set here: export it and run sudo --preserve-env=VMTEST_WINDOWS_PASSWORD $0 ..."
fi
cache=$(realpath -m "$cache")
runner_group=$(id -gn "$runner_user")

as_runner() {
  local pass=()
  if [[ -n "${VMTEST_WINDOWS_PASSWORD:-}" ]]; then pass=(VMTEST_WINDOWS_PASSWORD="$VMTEST_WINDOWS_PASSWORD"); fi
  runuser -u "$runner_user" -- env VMTEST_CACHE="$cache" "${pass[@]}" "$@"
}

# --- Packages -----------------------------------------------------------------------------------------

packages=(
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools xorriso   # the VMs, UEFI, TPM, Windows image builds
  python3-venv                                                # vmtest's virtualenv
  busybox-static dropbear-bin openssh-sftp-server cpio kmod e2fsprogs gcc make libc6-dev  # Linux guest
  util-linux                                                  # flock: one VM job per host at a time
)
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
# The Linux guest's kernel is fetched with `apt-get download`, which needs package lists.
if [[ ${#missing[@]} -gt 0 ]] || ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  note "installing ${missing[*]:-(package lists only)}"
  apt-get update -q
  if [[ ${#missing[@]} -gt 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

# --- KVM access ---------------------------------------------------------------------------------------

getent group kvm >/dev/null || groupadd --system kvm
if ! id -nG "$runner_user" | tr ' ' '\n' | grep -qx kvm; then
  note "adding $runner_user to the kvm group (restart the runner service to use it)"
  usermod -aG kvm "$runner_user"
fi
rule_file=/etc/udev/rules.d/65-vmtest-kvm.rules
rule='KERNEL=="kvm", GROUP="kvm", MODE="0660"'
if [[ "$(cat "$rule_file" 2>/dev/null)" != "$rule" ]]; then
  note "writing $rule_file"
  mkdir -p "$(dirname "$rule_file")"
  printf '%s\n' "$rule" >"$rule_file"
fi
if command -v udevadm >/dev/null && [[ -e /dev/kvm ]]; then
  if ! { udevadm control --reload-rules && udevadm trigger --name-match=kvm; }; then
    note "warning: udevadm could not apply the rule now; it applies at the next boot"
  fi
fi
[[ -e /dev/kvm ]] || note "warning: /dev/kvm does not exist: enable virtualisation (or nested virtualisation)"

# --- The image cache and the golden image ------------------------------------------------------------

# The cache is root's, group-writable for the runner, with the sticky bit: a job can add its own files
# (the KVM probe's answer, built modules, warm snapshots) but cannot rename, replace or delete what root
# put there. The image folders are root's and read-only: a job can boot them (on overlays), not change
# them (vmtest never writes a base image).
install -d -o root -g "$runner_group" -m 1775 "$cache"
install -d -o root -g root -m 0755 "$cache/windows11"

if [[ -n "$image" ]]; then
  name=$(basename "$image")
  dest="$cache/windows11/$name"
  if [[ -f "$dest/image.json" ]] && cmp -s "$image/image.json" "$dest/image.json"; then
    note "image folder already in place: $dest"
  else
    note "copying the image folder to $dest"
    rm -rf "$dest.part"
    cp -r --sparse=always --preserve=timestamps "$image" "$dest.part"
    # Verify each file against the sha256 image.json records (vmtest image build windows11 writes them).
    /usr/bin/python3 - "$dest.part" <<'PY'
import hashlib, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
manifest = json.loads((root / "image.json").read_text(encoding="utf-8"))
if manifest.get("kind") != "windows11" or manifest.get("format") != 1:
    sys.exit(f"setup: error: {root}/image.json is not a Windows 11 image manifest of format 1")
recorded = manifest.get("sha256") or {}
for needed in (manifest["paths"]["disk"], manifest["paths"]["efivars"]):
    if needed not in recorded:
        sys.exit(f"setup: error: image.json records no sha256 for {needed}")
for relative, expected in recorded.items():
    digest = hashlib.sha256()
    with open(root / relative, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        sys.exit(f"setup: error: {relative} has sha256 {digest.hexdigest()}, image.json says {expected}")
    print(f"setup: {relative}: sha256 matches image.json")
PY
    chown -R root:root "$dest.part"
    find "$dest.part" -type d -exec chmod 0755 {} +
    find "$dest.part" -type f -exec chmod 0444 {} +
    # The client key must stay private to the runner's group (SSH refuses a key others can read).
    find "$dest.part" -type f -name '*key*' ! -name '*.pub' -exec chgrp "$runner_group" {} + -exec chmod 0440 {} +
    rm -rf "$dest"
    mv "$dest.part" "$dest"
  fi
  ln -sfn "$name" "$cache/windows11/current"
  note "$cache/windows11/current -> $name"
fi

# --- The runner's policy -----------------------------------------------------------------------------

# Configuration keys that run host programs (machine.qemu, machine.extra_args) come with pull requests;
# vmtest refuses them unless this root-owned file allows them (vmtest/config/policy.py).
install -d -o root -g root -m 0755 "$(dirname "$policy")"
if [[ "$allow_host_programs" == true ]]; then
  wanted='allow_host_program_keys: [machine.qemu, machine.extra_args]'
else
  wanted='allow_host_program_keys: []'
fi
if [[ "$(cat "$policy" 2>/dev/null)" != "$wanted" ]]; then
  note "writing $policy"
  printf '%s\n' "$wanted" >"$policy"
  chmod 0644 "$policy"
fi

# --- vmtest -------------------------------------------------------------------------------------------

if [[ ! -x "$venv/bin/python" ]]; then
  note "creating $venv"
  /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q --upgrade "$vmtest_source"

# The Linux self-test guest: its kernel is what the KVM probe boots. Windows guests do not need it.
if [[ -d "$vmtest_source/images/linux" ]]; then
  as_runner VMTEST_LINUX_IMAGE_FILES="$vmtest_source/images/linux" "$venv/bin/vmtest" image build linux \
    || note "warning: the Linux self-test guest was not built (see above); Windows guests do not need it"
fi

note "checking the runner as $runner_user (VMTEST_CACHE=$cache)"
doctor=("$venv/bin/vmtest" doctor)
if [[ -n "$config" ]]; then
  doctor+=("$(realpath "$config")")
fi
as_runner "${doctor[@]}"
