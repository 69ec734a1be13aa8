#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine, installing and starting Debian's docker.io
# when needed. Idempotent; safe on a fresh machine and on one where a previous dockerd was killed
# (there is no systemd here to start it, see ../shared/TESTBED.md).
set -euo pipefail

log=/var/log/celery-fleet-dockerd.log

engine_answers() { docker info >/dev/null 2>&1; }

if engine_answers; then
  exit 0
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "lab: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# A dockerd that is still shutting down keeps its pid file: wait for it rather than race it.
if [ -f /var/run/docker.pid ]; then
  old=$(cat /var/run/docker.pid 2>/dev/null || true)
  if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
    for _ in $(seq 1 30); do kill -0 "$old" 2>/dev/null || break; sleep 1; done
  fi
  kill -0 "${old:-0}" 2>/dev/null || rm -f /var/run/docker.pid
fi

if ! engine_answers; then
  echo "lab: starting dockerd (log: $log)"
  setsid nohup dockerd >"$log" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    engine_answers && break
    sleep 1
  done
fi

if ! engine_answers; then
  echo "lab: the Docker engine did not answer within 60 s; last lines of $log:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
