#!/usr/bin/env bash
# The floor of the provisioning benchmarks: a bare script, no Ansible, that puts on fresh lab
# hosts what site.yml puts there, every host in parallel. It installs the same Debian packages in
# one apt-get transaction per host, unpacks the same release archive (the wheelhouse site.yml
# ships) into the same venv, copies the same configuration files (captured from a host site.yml
# converged: PAYLOAD/<role>/), and starts the services. Nothing is checked, templated or
# compared: it is the least work a provisioning can be. PAYLOAD holds, from bench/bench.py's
# capture: release.tar and release-name, packages-{broker,worker}, and HOST.tar for every host
# (its configuration files, with their owners and modes).
#
#   bench/floor.sh PAYLOAD BROKER WORKER...   (the first worker's files include beat's program)
set -euo pipefail
payload=$1 broker=$2
shift 2
workers=("$@")
release=$(cat "$payload/release-name")

on() { docker exec "$1" sh -c "$2"; }

install() {  # HOST ROLE
    local host=$1 role=$2
    on "$host" "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(cat "$payload/packages-$role") >/dev/null"
}

provision_broker() {
    install "$broker" broker
    docker exec -i "$broker" tar -C / -x < "$payload/$broker.tar"
    on "$broker" "systemctl restart redis-server"
}

provision_worker() {  # HOST
    local host=$1 dir=/opt/fleetapp/releases/$release
    install "$host" worker
    on "$host" "groupadd --system celery && useradd --system --gid celery --home-dir /var/lib/celery --shell /usr/sbin/nologin celery \
        && install -d -o celery -g celery -m 0750 /var/lib/celery && install -d -o celery -g celery /var/log/celery && mkdir -p $dir"
    docker exec -i "$host" tar -C "$dir" -x < "$payload/release.tar"
    on "$host" "python3 -m venv $dir/venv && $dir/venv/bin/pip install -q --no-index --find-links $dir/wheelhouse -r $dir/wheelhouse/requirements.txt \
        && printf '%s\n' $dir/boot $dir/source > $dir/venv/lib/python3.11/site-packages/celery_fleet.pth && ln -sfn $dir /opt/fleetapp/current"
    docker exec -i "$host" tar -C / -x < "$payload/$host.tar"
    on "$host" "supervisorctl update >/dev/null"
}

pids=()
provision_broker & pids+=($!)
for host in "${workers[@]}"; do
    provision_worker "$host" & pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
