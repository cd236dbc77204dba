#!/usr/bin/env bash
# Prepares a Debian or Ubuntu machine as a self-hosted GitHub Actions runner for vmtest: packages, KVM
# access for the runner user, an image cache it owns, the golden Windows image, vmtest in a virtualenv,
# and finally `vmtest doctor`. Run it again at any time: it only does what is missing.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: sudo ci/runner/setup.sh [OPTIONS]

Prepares this Debian/Ubuntu machine to run vmtest jobs as a self-hosted GitHub Actions runner.

Options:
  --user NAME       the user the runner service runs as (default: the user who ran sudo)
  --cache DIR       the image cache, VMTEST_CACHE (default: /var/cache/vmtest)
  --image PATH      copy this golden Windows image (qcow2) into DIR/windows11/ and record its sha256;
                    a metadata file next to it (win11.qcow2 -> win11.json) is copied along
  --venv DIR        where vmtest is installed (default: /opt/vmtest/venv)
  --vmtest SOURCE   what pip installs vmtest from (default: the vmtest source tree holding this script)
  --config FILE     the vmtest configuration the final `vmtest doctor` checks (default: vmtest's)
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

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --user) runner_user=${2:?--user needs a NAME}; shift 2 ;;
    --cache) cache=${2:?--cache needs a DIR}; shift 2 ;;
    --image) image=${2:?--image needs a PATH}; shift 2 ;;
    --venv) venv=${2:?--venv needs a DIR}; shift 2 ;;
    --vmtest) vmtest_source=${2:?--vmtest needs a SOURCE}; shift 2 ;;
    --config) config=${2:?--config needs a FILE}; shift 2 ;;
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
  [[ -f "$image" ]] || die "--image $image is not a file"
  image=$(realpath "$image")
fi
cache=$(realpath -m "$cache")
runner_group=$(id -gn "$runner_user")

as_runner() {
  runuser -u "$runner_user" -- env VMTEST_CACHE="$cache" "$@"
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

install -d -o "$runner_user" -g "$runner_group" -m 0750 "$cache" "$cache/windows11"

if [[ -n "$image" ]]; then
  name=$(basename "$image")
  dest="$cache/windows11/$name"
  metadata_name="${name%.*}.json"
  [[ "$name" == *.* ]] || metadata_name="$name.json"
  source_metadata="$(dirname "$image")/$metadata_name"
  dest_metadata="$cache/windows11/$metadata_name"
  if [[ -f "$dest" && -f "$dest_metadata" && "$(stat -c %s.%Y "$dest")" == "$(stat -c %s.%Y "$image")" ]]; then
    note "golden image already in place: $dest"
  else
    note "copying the golden image to $dest"
    cp --sparse=always --preserve=timestamps "$image" "$dest.part"
    sha256=$(sha256sum "$dest.part" | cut -d' ' -f1)
    # Record the hash in the metadata, keeping whatever else it says (licence_expires, ...).
    /usr/bin/python3 - "$source_metadata" "$dest_metadata.part" "$sha256" <<'PY'
import json, pathlib, sys
source, dest, sha256 = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
metadata = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else {}
recorded = metadata.get("sha256")
if recorded and recorded.lower() != sha256:
    sys.exit(f"setup: error: the copy's sha256 {sha256} is not the {recorded} that {source} records")
metadata["sha256"] = sha256
dest.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")
PY
    chown "$runner_user:$runner_group" "$dest.part" "$dest_metadata.part"
    chmod 0444 "$dest.part"  # vmtest only ever runs VMs on overlays of it
    mv -f "$dest_metadata.part" "$dest_metadata"
    mv -f "$dest.part" "$dest"
    note "sha256 $sha256 recorded in $dest_metadata"
  fi
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
