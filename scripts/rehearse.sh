#!/usr/bin/env bash
# The SD-card rehearsal (`make rehearse`): a simulated Pi 5 dies and is rebuilt
# from the controller with one command, and nothing is lost.
#   1. provision a fresh Pi (molecule scenario `rehearse`, site.yml)
#   2. chat through the backend's API (a few threads), then back up (playbooks/backup.yml)
#   3. destroy the Pi and its Docker volume: a dead SD card (the backups stay on the controller)
#   4. rebuild: a fresh Pi, site.yml (it restores the newest backup before the backend starts,
#      and ends with the stream check), then check the data is identical (sha256 and owner of
#      every file, GET of every thread)
#   5. newer data on the Pi, then a second converge: it must change nothing and keep that data
#   6. the guards on the Pi itself (molecule/rehearse/tests/test_sim_guards.py): firewall, SSH keys only,
#      a broken sshd setting or firewall rule never goes live
#   7. issue 13's hostile clients on that Pi (molecule/rehearse/tests/test_sim_hostile.py), each against the
#      shipped settings and the old ones beside them, a legitimate client measured meanwhile
#      (figures in .cache/hostile/figures.json)
# Prints the time of each step and of the rebuild. REHEARSE_KEEP=1 keeps the Pi afterwards.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/.venv/bin:$PATH" ANSIBLE_CONFIG="$root/ansible.cfg" PYTHONDONTWRITEBYTECODE=1
scenario=rehearse
instance=${PI5_SIM:-pi5}-rehearse
volume=$instance-docker
backups="$root/backups/$instance"
logs="$root/.cache/rehearse"
data="$root/molecule/rehearse/rehearse_data.py"
mkdir -p "$logs"
rm -f "$logs"/*

started=$(date +%s)
declare -a summary=()
clock() { local s=$(($(date +%s) - $1)); printf '%d:%02d' $((s / 60)) $((s % 60)); }

# step NAME COMMAND...: run it with its output in .cache/rehearse/NN-name.log; on failure show the end.
n=0
step() {
  local name=$1 t0 log
  shift
  n=$((n + 1))
  log=$(printf '%s/%02d-%s.log' "$logs" "$n" "${name//[^A-Za-z0-9]/-}")
  t0=$(date +%s)
  printf '[%s] %-58s' "$(clock "$started")" "$name"
  if "$@" >"$log" 2>&1; then
    printf ' %s\n' "$(clock "$t0")"
    summary+=("$(printf '%-58s %s' "$name" "$(clock "$t0")")")
  else
    printf ' FAILED after %s\n\n' "$(clock "$t0")"
    sed 's/\x1b\[[0-9;]*m//g' "$log" | tail -n 60 >&2
    printf '\nFull output: %s\n' "$log" >&2
    return 1
  fi
}

destroy_pi() {
  molecule destroy -s "$scenario"
  # Also a Pi that molecule no longer knows of (left by a run from another checkout).
  docker rm -f "$instance" >/dev/null 2>&1 || true
  docker volume rm -f "$volume"
  ! docker volume inspect "$volume" >/dev/null 2>&1
}

cleanup() {
  if [[ ${REHEARSE_KEEP:-0} == 1 ]]; then
    echo "Kept the Pi: docker exec -it $instance bash; remove it with: molecule destroy -s $scenario && docker volume rm $volume"
  else
    destroy_pi >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

start_clean() {
  destroy_pi
  rm -rf "$backups"
}

check_backup() {
  local archives=("$backups"/*.tar.gz)
  [[ ${#archives[@]} == 1 && -f ${archives[0]} ]] || { echo "expected one archive in $backups: ${archives[*]}"; return 1; }
  (cd "$backups" && sha256sum -c ./*.tar.gz.sha256)
  python3 "$data" check-archive "${archives[0]}" "$logs/before.json"
}

# said LOG TEXT: the run's output says TEXT (molecule wraps long lines in a box: join them first).
said() {
  sed 's/\x1b\[[0-9;]*m//g; s/^ *│ *//' "$1" | tr -s ' \n' ' ' | grep -qF -- "$2"
}

# site.yml on the fresh Pi must say that it restored the data (and then pass the stream check).
converge_with_restore() {
  molecule converge -s "$scenario" 2>&1 | tee "$logs/rebuild-converge.log"
  said "$logs/rebuild-converge.log" "data file(s) into /var/lib/pi5-backend"
}

# A second run must change nothing, and say that it left the Pi's (newer) data alone.
converge_again() {
  molecule idempotence -s "$scenario" 2>&1 | tee "$logs/second-converge.log"
  said "$logs/second-converge.log" "nothing restored; data on the Pi is never overwritten"
}

echo "SD-card rehearsal on the simulated Pi $instance (logs: $logs)"
step "throwaway SSH key for the deploy user" \
  bash -c 'mkdir -p .cache/sim-ssh && { [[ -f .cache/sim-ssh/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N "" -C pi5-rehearse -f .cache/sim-ssh/id_ed25519; }'
step "start clean (no Pi, no volume, no old rehearsal backups)" start_clean

step "create the first Pi" molecule create -s "$scenario"
step "provision it (site.yml)" molecule converge -s "$scenario"
step "chat: start threads through the backend's API" python3 "$data" make-threads "$instance" "$logs/threads.json"
step "record the threads (GET) and the data files (sha256, owner)" \
  python3 "$data" snapshot "$instance" "$logs/threads.json" "$logs/before.json"
step "back up (playbooks/backup.yml)" molecule side-effect -s "$scenario"
step "check the archive: sidecar sha256 and manifest" check_backup

step "the SD card dies: destroy the Pi and its Docker volume" destroy_pi
[[ -d $backups ]] || { echo "the backups on the controller did not survive: $backups" >&2; exit 1; }

rebuild_started=$(date +%s)
step "create a fresh Pi" molecule create -s "$scenario"
step "rebuild it with site.yml (restore, stream check)" converge_with_restore
step "compare the threads and data files with the backup" bash -c \
  "python3 '$data' snapshot '$instance' '$logs/threads.json' '$logs/after.json' && python3 '$data' compare '$logs/before.json' '$logs/after.json'"
rebuild_time=$(clock "$rebuild_started")

step "newer data on the rebuilt Pi: more threads" python3 "$data" make-threads "$instance" "$logs/threads.json"
step "record it" python3 "$data" snapshot "$instance" "$logs/threads.json" "$logs/newer.json"
step "converge again: nothing changes, nothing restored" converge_again
step "the newer data is still there, untouched" bash -c \
  "python3 '$data' snapshot '$instance' '$logs/threads.json' '$logs/final.json' && python3 '$data' compare '$logs/newer.json' '$logs/final.json'"
step "guards on the Pi (firewall, SSH, broken configs never go live)" \
  env PI5_SIM_INSTANCE="$instance" pytest -q molecule/rehearse/tests/test_sim_guards.py
step "hostile clients on the Pi, shipped and old settings (issue 13)" \
  env PI5_SIM_INSTANCE="$instance" pytest -q molecule/rehearse/tests/test_sim_hostile.py

echo
echo "Rehearsal passed in $(clock "$started"):"
printf '  %s\n' "${summary[@]}"
echo "Rebuild (fresh Pi to verified stream with the data back): $rebuild_time"
echo "Hostile clients' figures: .cache/hostile/figures.json"
