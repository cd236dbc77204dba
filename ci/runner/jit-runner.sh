#!/usr/bin/env bash
# Runs GitHub Actions jobs on this host one at a time, each on a fresh just-in-time (JIT) runner: a
# runner registered for exactly one job, which removes itself when the job ends (docs.github.com,
# "Security hardening for GitHub Actions", *Using just-in-time runners*; REST "Create configuration for
# a just-in-time runner": POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig with name,
# runner_group_id, labels, work_folder -> encoded_jit_config; then `run.sh --jitconfig`). Between jobs
# the work folder is deleted, so nothing one job (or one pull request) leaves behind reaches the next.
# The images in VMTEST_CACHE are root-owned and read-only (ci/runner/setup.sh), so a job cannot change
# them either.
#
# Run it as root from a systemd unit; the token (a fine-grained token with the repository's
# "Administration: write" permission, or a GitHub App's) comes from the environment, never an argument.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: GITHUB_TOKEN=... ci/runner/jit-runner.sh --repo OWNER/NAME --runner-dir DIR --user NAME [OPTIONS]

  --repo OWNER/NAME   the repository the runner serves
  --runner-dir DIR    an unpacked actions/runner release (holding run.sh), owned by root
  --user NAME         the unprivileged user the job runs as (the user setup.sh --user prepared)
  --labels LIST       comma-separated labels (default: self-hosted,linux,kvm)
  --group-id N        the runner group's id (default: 1, the repository's default group)
  --once              run one job, then exit (default: loop)
USAGE
}

die() {
  echo "jit-runner: error: $*" >&2
  exit 2
}

repo="" runner_dir="" user="" labels="self-hosted,linux,kvm" group_id=1 once=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --repo) repo=${2:?--repo needs OWNER/NAME}; shift 2 ;;
    --runner-dir) runner_dir=${2:?--runner-dir needs a DIR}; shift 2 ;;
    --user) user=${2:?--user needs a NAME}; shift 2 ;;
    --labels) labels=${2:?--labels needs a LIST}; shift 2 ;;
    --group-id) group_id=${2:?--group-id needs N}; shift 2 ;;
    --once) once=true; shift ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ -n "$repo" && -n "$runner_dir" && -n "$user" ]] || { usage >&2; die "--repo, --runner-dir and --user are required"; }
[[ -n "${GITHUB_TOKEN:-}" ]] || die "GITHUB_TOKEN is not set"
[[ -x "$runner_dir/run.sh" ]] || die "$runner_dir/run.sh does not exist: unpack an actions/runner release there"
id "$user" >/dev/null 2>&1 || die "user '$user' does not exist"
[[ "$(id -u)" -eq 0 ]] || die "run as root (it creates and deletes each job's work folder)"

one_job() {
  local name work body config
  name="vmtest-$(hostname -s)-$(date +%s)-$$"
  work=$(mktemp -d "/var/tmp/vmtest-runner.XXXXXX")
  # The runner itself needs a writable copy: it writes its own state next to run.sh.
  cp -a "$runner_dir/." "$work/runner"
  chown -R "$user" "$work"
  body=$(/usr/bin/python3 -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "runner_group_id": int(sys.argv[2]), "labels": sys.argv[3].split(","), "work_folder": "_work"}))' "$name" "$group_id" "$labels")
  config=$(curl --fail --silent --show-error -X POST \
    -H "Accept: application/vnd.github+json" -H "X-GitHub-Api-Version: 2022-11-28" \
    -H "Authorization: Bearer $GITHUB_TOKEN" \
    "https://api.github.com/repos/$repo/actions/runners/generate-jitconfig" -d "$body" \
    | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["encoded_jit_config"])')
  echo "jit-runner: $name waits for one job"
  # The encoded configuration is passed through the environment, not the command line (ps shows that).
  status=0
  # shellcheck disable=SC2016  # expanded by the inner bash, from its environment
  runuser -u "$user" -- env -i HOME="$work" PATH=/usr/local/bin:/usr/bin:/bin JITCONFIG="$config" \
    bash -c 'cd "$HOME/runner" && exec ./run.sh --jitconfig "$JITCONFIG"' || status=$?
  rm -rf "$work"
  echo "jit-runner: $name ended ($status); its work folder is gone"
}

while true; do
  one_job
  if [[ "$once" == true ]]; then break; fi
done
