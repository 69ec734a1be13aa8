#!/usr/bin/env bash
# Molecule runs one after another, each timed by molecule/timing.py; stops at the first that
# fails. A run is a scenario's name, or apps:BROKER:MANAGER:TESTS (scenario apps on that broker
# and process manager, with the number of tests its verify must run), or
# drills:BROKER:MANAGER:SWITCHED_FROM:TESTS:ACK_TIMEOUT (scenario drills, switched from the other
# manager, with that broker ack timeout).
set -euo pipefail
cd "$(dirname "$0")/.."
for run in "$@"; do
  IFS=: read -r scenario broker manager third fourth fifth <<< "$run"
  case "$scenario" in
    apps)
      APPS_BROKER=$broker APPS_PROCESS_MANAGER=$manager APPS_EXPECTED_TESTS=$third \
        python molecule/timing.py run "apps $broker/$manager" -- molecule test --scenario-name apps ;;
    drills)
      # The process managers' operations (a warm stop; the status, stop and start actions) run
      # once per manager: here under supervisor, in fleet under systemd.
      markers="(fleet_app and not manager_operations) or drills"
      [ "$manager" = supervisor ] && markers="fleet_app or drills"
      DRILLS_MARKERS=$markers DRILLS_BROKER=$broker DRILLS_PROCESS_MANAGER=$manager DRILLS_SWITCHED_FROM=$third DRILLS_EXPECTED_TESTS=$fourth DRILLS_ACK_TIMEOUT=$fifth \
        python molecule/timing.py run "drills $broker/$manager" -- molecule test --scenario-name drills ;;
    *)
      python molecule/timing.py run "$scenario" -- molecule test --scenario-name "$scenario" ;;
  esac
done
