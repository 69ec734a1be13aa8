#!/usr/bin/env python3
"""celery-fleet's benchmarks (`make bench`): provisioning against a bare-script floor.

    python bench/bench.py provision [--workers 2 4 8] [--rounds 3]
    python bench/bench.py throughput [--brokers redis rabbitmq] [--tasks 2000] [--rounds 3]
    python bench/bench.py settings [--brokers redis rabbitmq] [--tasks 2000] [--rounds 3]
    python bench/bench.py report

`provision` measures, for each worker count N (hosts: one broker and N workers, fresh from the
lab's base image for every run, made by lab/create.yml like every other lab):
  P1/P5  a cold `ansible-playbook site.yml` against the floor (bench/floor.sh: the same packages,
         wheels and configuration files, no Ansible, every host in parallel), interleaved
         floor, site, floor, site... for --rounds rounds;
  P2     after each cold site.yml: a second run (it must report changed=0), then a run with one
         worker group's concurrency changed, which must restart that group's program only
         (compared by main PIDs).
`throughput` (P4) measures tasks per second through the deployed fleet against stock Celery
started by hand on the same hosts; `settings` prices the fleet's settings one at a time (each
back to Celery's default) where the fleet is slower.
Raw timings go to bench/results/<name>.json (machine, date, commit, every run); `report`
writes BENCHMARKS.md's tables from the results. Broker Redis, workers under supervisor (the
lab's defaults). Every address touched is a lab container's on the benchmark's own network.
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / ".cache" / "bench"
NETWORK, SUBNET = "celery-fleet-bench", "172.28.60.0/24"
ENV = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
           FLEET_BROKER="redis", FLEET_PROCESS_MANAGER="supervisor", FLEET_RESULT_BACKEND="")


def log(message):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def run(argv, env=None, **kwargs):
    done = subprocess.run(argv, cwd=ROOT, env=dict(ENV, **(env or {})), capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def hosts_for(workers):
    return ["bench-broker1"] + [f"bench-worker{i}" for i in range(1, workers + 1)]


def inventory(workers):
    """An inventory of the benchmark's hosts with the lab's variables (docker connection, secrets)."""
    directory = WORK / f"inventory-{workers}"
    directory.mkdir(parents=True, exist_ok=True)
    names = hosts_for(workers)
    (directory / "hosts.yml").write_text(json.dumps({"all": {"children": {
        "brokers": {"hosts": {names[0]: {}}},
        "workers": {"hosts": {name: {} for name in names[1:]}},
        "beat": {"hosts": {names[1]: {}}},
        "clients": {"hosts": {}},
    }}}))
    link = directory / "group_vars"
    if not link.exists():
        link.symlink_to(ROOT / "inventory" / "lab" / "group_vars")
    return directory


def lab(playbook, workers):
    """lab/create.yml or lab/destroy.yml for the benchmark's hosts, on its own network."""
    extra = json.dumps({"lab_network": NETWORK, "lab_subnet": SUBNET})
    run(["ansible-playbook", "-i", str(inventory(workers)), "-e", extra, f"lab/{playbook}"], timeout=600)


def fresh_hosts(workers):
    """Remove every benchmark host (whatever its count), then create this run's from the image."""
    found = run(["docker", "ps", "-aq", "--filter", "name=^bench-"]).stdout.split()
    if found:
        run(["docker", "rm", "-f", *found])
    lab("create.yml", workers)


def site(inventory_dir, *extra, env=None):
    """Run site.yml; returns (seconds, {host: changed})."""
    started = time.monotonic()
    done = run(["ansible-playbook", "-i", str(inventory_dir), "site.yml", *extra], env=env, timeout=1800)
    seconds = time.monotonic() - started
    recap = {host: int(changed) for host, changed in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", done.stdout, re.M)}
    return seconds, recap


def docker_exec(host, command):
    return run(["docker", "exec", host, "sh", "-c", command]).stdout


def capture_payload(workers):
    """What the floor installs, taken from hosts site.yml has just converged: the packages site.yml
    added to the base image, the release archive, and each host's configuration files."""
    payload = WORK / "payload"
    payload.mkdir(parents=True, exist_ok=True)
    names = hosts_for(workers)
    base = set(run(["docker", "run", "--rm", "--entrypoint", "apt-mark", image(), "showmanual"]).stdout.split())
    for role, host in (("broker", names[0]), ("worker", names[1])):
        packages = sorted(set(docker_exec(host, "apt-mark showmanual").split()) - base)
        (payload / f"packages-{role}").write_text(" ".join(packages))
    for host in names:
        paths = ["etc/redis/redis.conf"] if host == names[0] else ["etc/celery-fleet", "opt/fleetapp/bin", "etc/supervisor/conf.d"]
        tar = subprocess.run(["docker", "exec", host, "tar", "-C", "/", "-c", *paths], check=True, capture_output=True)
        (payload / f"{host}.tar").write_bytes(tar.stdout)
    release = docker_exec(names[1], "readlink /opt/fleetapp/current").strip().rsplit("/", 1)[1]
    (payload / "release-name").write_text(release)
    archives = sorted(Path("~/.cache/celery-fleet/wheelhouses").expanduser().glob(f"*-{release}.tar"))
    (payload / "release.tar").write_bytes(archives[-1].read_bytes())
    return payload


def image():
    return run(["bash", "lab/image.sh"]).stdout.strip().splitlines()[-1]


def floor(payload, workers):
    names = hosts_for(workers)
    started = time.monotonic()
    run(["bash", "bench/floor.sh", str(payload), *names], timeout=1800)
    return time.monotonic() - started


def answering(workers):
    """Untimed, after each contender: every worker host's default group answers a ping, so a
    contender that left something out cannot look fast."""
    for host in hosts_for(workers)[1:]:
        ping = f"/opt/fleetapp/bin/run celery --app=celery_fleet:app inspect ping --timeout=2 -d default@{host}"
        deadline = time.monotonic() + 90
        while subprocess.run(["docker", "exec", host, "sh", "-c", ping], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                sys.exit(f"default@{host} does not answer after provisioning")
            time.sleep(1)


def main_pids():
    """Main PIDs of bench-worker1's supervisor programs."""
    out = docker_exec("bench-worker1", "supervisorctl status")
    return {line.split()[0]: line.split()[3].rstrip(",") for line in out.splitlines() if "RUNNING" in line}


def provision(args):
    RESULTS.mkdir(parents=True, exist_ok=True)
    run(["bash", "lab/engine.sh"])
    runs = []
    largest = max(args.workers)
    log(f"warm-up: site.yml on {largest} worker hosts builds the release and gives the floor its files")
    fresh_hosts(largest)
    site(inventory(largest))
    payload = capture_payload(largest)
    for round_ in range(1, args.rounds + 1):
        for workers in args.workers:
            inv = inventory(workers)
            fresh_hosts(workers)
            seconds = floor(payload, workers)
            answering(workers)
            runs.append({"benchmark": "cold", "contender": "floor", "workers": workers, "round": round_, "seconds": round(seconds, 2)})
            log(f"round {round_}, {workers} workers: floor {seconds:.1f} s")

            fresh_hosts(workers)
            seconds, recap = site(inv)
            answering(workers)
            runs.append({"benchmark": "cold", "contender": "site.yml", "workers": workers, "round": round_, "seconds": round(seconds, 2),
                         "changed": recap})
            log(f"round {round_}, {workers} workers: cold site.yml {seconds:.1f} s")
            if workers == args.workers[0]:
                runs += reruns(inv, workers, round_)
            write(runs, args)
    lab("destroy.yml", largest)  # every benchmark host and the network


def reruns(inv, workers, round_):
    """P2 on hosts site.yml has just converged: a no-op run, then a one-change run."""
    seconds, recap = site(inv)
    assert all(n == 0 for n in recap.values()), f"the second run changed something: {recap}"
    found = [{"benchmark": "noop", "contender": "site.yml", "workers": workers, "round": round_, "seconds": round(seconds, 2),
              "changed": recap}]
    log(f"round {round_}, {workers} workers: no-op site.yml {seconds:.1f} s")

    before = main_pids()
    groups = [{"name": "default", "queues": ["celery"]}, {"name": "long", "queues": ["long"], "concurrency": 1 + round_}]
    seconds, recap = site(inv, "-e", json.dumps({"celery_worker_groups": groups}))
    after = main_pids()
    restarted = sorted(name for name in before if before[name] != after.get(name))
    assert restarted == ["celery-fleetapp-worker-long"], f"the one-change run restarted {restarted}"
    found.append({"benchmark": "one-change", "contender": "site.yml", "workers": workers, "round": round_,
                  "seconds": round(seconds, 2), "changed": recap, "restarted": restarted})
    log(f"round {round_}, {workers} workers: one-change site.yml {seconds:.1f} s, restarted {restarted}")
    return found


# --- P4: the price of safety ----------------------------------------------------------------------

STOCK_WORKER = (
    "set -a; . /etc/celery-fleet/fleetapp.env; set +a; "
    "exec env -i HOME=/var/lib/celery PATH=/usr/bin:/bin CELERY_BROKER_URL=\"$CELERY_BROKER_URL\" "
    "CELERY_RESULT_BACKEND=\"$CELERY_RESULT_BACKEND\" /usr/sbin/runuser -u celery -- /opt/fleetapp/current/venv/bin/celery "
    "-A fleetapp {command}"
)


def stock_workers(names, concurrency):
    """Stop the fleet's programs and start stock Celery by hand: `celery -A fleetapp worker`, Celery's
    defaults, the same concurrency, queue and broker."""
    for host in names:
        docker_exec(host, "supervisorctl stop all >/dev/null")
        command = STOCK_WORKER.format(command=f"worker --concurrency={concurrency} -Q celery --hostname=stock@{host} --loglevel=warning")
        run(["docker", "exec", "-d", host, "sh", "-c", command + " >/var/log/celery/stock.log 2>&1"])
    wait_answering(names, "stock")


def fleet_workers(names):
    for host in names:
        # [c]: the pattern must not match this shell's own command line.
        docker_exec(host, "pkill -TERM -f '[c]elery -A fleetapp worker' || true; "
                          "while pgrep -f '[c]elery -A fleetapp worker' >/dev/null; do sleep 0.2; done")
        docker_exec(host, "supervisorctl start all >/dev/null")
    wait_answering(names, "default")


def wait_answering(names, group):
    deadline = time.monotonic() + 120
    for host in names:
        ping = STOCK_WORKER.format(command=f"inspect ping --timeout=2 -d {group}@{host}")
        while subprocess.run(["docker", "exec", host, "sh", "-c", ping], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                sys.exit(f"{group}@{host} never answered")
            time.sleep(1)


def converged_fleet(broker, workers):
    """Fresh hosts with `broker`, converged by site.yml; returns the client environment (a dict)
    that playbooks/client_env.yml writes for this machine."""
    env = {"FLEET_BROKER": broker, "FLEET_CLIENT_ENV": str(WORK / f"client-{broker}.env")}
    log(f"{broker}: fresh hosts, site.yml, client environment")
    fresh_hosts(workers)
    site(inventory(workers), env=env)
    run(["ansible-playbook", "-i", str(inventory(workers)), "playbooks/client_env.yml"], env=env)
    return dict(re.findall(r"^([A-Z_][A-Z0-9_]*)='([^']*)'$", Path(env["FLEET_CLIENT_ENV"]).read_text(), re.M))


def client(mode, tasks, env):
    """bench/throughput_client.py MODE TASKS on this machine, with `env` over an environment rid
    of any CELERY_* or FLEET_APP* of our own; returns its figure (tasks per second...)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "FLEET_APP"))}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput_client.py"), mode, str(tasks)],
                          env={**clean, **env}, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.exit(f"the {mode} client failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout)


def throughput(args):
    RESULTS.mkdir(parents=True, exist_ok=True)
    run(["bash", "lab/engine.sh"])
    runs, workers = [], 2
    names = hosts_for(workers)[1:]
    for broker in args.brokers:
        client_env = converged_fleet(broker, workers)
        for round_ in range(1, args.rounds + 1):
            for contender in ("fleet", "stock"):
                if contender == "stock":
                    stock_workers(names, concurrency=2)
                figure = client(contender, args.tasks, {k: v for k, v in client_env.items()
                                                        if contender == "fleet" or k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")})
                runs.append({"benchmark": "throughput", "broker": broker, "contender": contender, "round": round_, **figure})
                log(f"{broker}, round {round_}: {contender} {figure['per_second']} tasks/s")
                if contender == "stock":
                    fleet_workers(names)
                write(runs, args, "throughput")
    lab("destroy.yml", workers)


# One setting at a time back to Celery's default, to price each where the fleet is slower than
# stock Celery: (label, environment override for the workers and the client).
SETTINGS = {
    "acks_late off": {"CELERY_TASK_ACKS_LATE": "false"},
    "prefetch 4 (Celery's default)": {"CELERY_WORKER_PREFETCH_MULTIPLIER": "4"},
    "result_extended off": {"CELERY_RESULT_EXTENDED": "false"},
    "worker_direct off": {"CELERY_WORKER_DIRECT": "false"},
}
CONFIRMS_OFF = {"publisher confirms off": {"CELERY_BROKER_TRANSPORT_OPTIONS": '{"confirm_publish": false}'}}
ENV_FILE = "/etc/celery-fleet/fleetapp.env"


def with_override(names, override):
    """Restart the fleet's workers with `override` appended to their environment file (the last
    assignment wins when the launcher sources it); an empty override restores the file."""
    for host in names:
        docker_exec(host, f"test -f {ENV_FILE}.bench || cp -p {ENV_FILE} {ENV_FILE}.bench; cp -p {ENV_FILE}.bench {ENV_FILE}")
        for name, value in override.items():
            docker_exec(host, f"printf \"%s='%s'\\n\" {name} '{value}' >> {ENV_FILE}")
        docker_exec(host, "supervisorctl restart all >/dev/null")
    wait_answering(names, "default")


def settings(args):
    """P4, priced: the deployed fleet with one of its settings at a time back to Celery's default."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    run(["bash", "lab/engine.sh"])
    runs, workers = [], 2
    names = hosts_for(workers)[1:]
    for broker in args.brokers:
        client_env = converged_fleet(broker, workers)
        variants = {"deployed fleet": {}, **SETTINGS, **(CONFIRMS_OFF if broker == "rabbitmq" else {})}
        for round_ in range(1, args.rounds + 1):
            for label, override in variants.items():
                with_override(names, override)
                figure = client("fleet", args.tasks, {**client_env, **override})
                runs.append({"benchmark": "settings", "broker": broker, "variant": label, "round": round_, **figure})
                log(f"{broker}, round {round_}: {label} {figure['per_second']} tasks/s")
                write(runs, args, "settings")
        with_override(names, {})
    lab("destroy.yml", workers)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "kernel": platform.release(),
            "os": Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else platform.platform()}


def write(runs, args, name="provision"):
    commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
    # The results themselves do not count: they change with every run.
    dirty = bool(run(["git", "status", "--porcelain", "--", ".", ":!bench/results"]).stdout.strip())
    document = {"name": name, "machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "commit": commit + ("+dirty" if dirty else ""), "rounds": args.rounds, "runs": runs}
    with tempfile.NamedTemporaryFile("w", dir=RESULTS, delete=False) as tmp:
        json.dump(document, tmp, indent=1)
    os.replace(tmp.name, RESULTS / f"{name}.json")


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def report(_args):
    text = (ROOT / "BENCHMARKS.md").read_text()
    for name, render in (("provision", provision_table), ("throughput", throughput_table), ("settings", settings_table)):
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        m = data["machine"]
        body = render(data)
        generated = (f"<!-- {name}: generated by `python bench/bench.py report` from bench/results/{name}.json -->\n"
                     f"Measured {data['date']} at commit `{data['commit'][:12]}` on {m['cpu']} ({m['cores']} cores, "
                     f"{m['memory_gib']} GiB, kernel {m['kernel']}, Debian {m['os']}); {data['rounds']} rounds, medians with "
                     f"(min-max).\n\n{body}<!-- /{name} -->")
        text = re.sub(rf"<!-- {name}:.*?<!-- /{name} -->", lambda _: generated, text, flags=re.S)
        print(body)
    (ROOT / "BENCHMARKS.md").write_text(text)


def fmt(values, unit=" s"):
    s = summary(values)
    return f"{s['median']:.1f}{unit} ({s['min']:.1f}-{s['max']:.1f})"


def provision_table(data):
    by = {}
    for r in data["runs"]:
        by.setdefault((r["benchmark"], r["contender"], r["workers"]), []).append(r["seconds"])
    median = lambda key: summary(by[key])["median"]  # noqa: E731
    counts = sorted({r["workers"] for r in data["runs"]})
    rows = ["| Worker hosts | Floor (bare script) | Cold site.yml | site.yml / floor |", "|---|---|---|---|"]
    for n in counts:
        rows.append(f"| {n} | {fmt(by[('cold', 'floor', n)])} | {fmt(by[('cold', 'site.yml', n)])} | "
                    f"{median(('cold', 'site.yml', n)) / median(('cold', 'floor', n)):.2f} |")
    text = "\n".join(rows) + "\n"
    n = counts[0]
    if ("noop", "site.yml", n) in by:
        cold, flo, noop = median(("cold", "site.yml", n)), median(("cold", "floor", n)), median(("noop", "site.yml", n))
        text += (f"\nWith {n} worker hosts: the no-op rerun (changed=0 on every host) took {fmt(by[('noop', 'site.yml', n)])}, "
                 f"{noop / cold:.2f} of the cold run and {noop / flo:.2f} of the floor; the one-change rerun took "
                 f"{fmt(by[('one-change', 'site.yml', n)])} and restarted only the changed group's program (main PIDs compared).\n")
    if len(counts) > 1:
        lo, hi = counts[0], counts[-1]
        ours = median(("cold", "site.yml", hi)) / median(("cold", "site.yml", lo))
        theirs = median(("cold", "floor", hi)) / median(("cold", "floor", lo))
        text += (f"\nFrom {lo} to {hi} worker hosts, cold site.yml grew {ours:.2f}x and the floor {theirs:.2f}x "
                 f"(target: no more than {theirs * 1.2:.2f}x, the floor's growth plus 20%).\n")
    return text


def throughput_table(data):
    by = {}
    for r in data["runs"]:
        by.setdefault((r["broker"], r["contender"]), []).append(r["per_second"])
    rows = ["| Broker | Stock Celery (tasks/s) | Deployed fleet (tasks/s) | fleet / stock |", "|---|---|---|---|"]
    for broker in sorted({r["broker"] for r in data["runs"]}):
        stock, fleet = by[(broker, "stock")], by[(broker, "fleet")]
        rows.append(f"| {broker} | {fmt(stock, '')} | {fmt(fleet, '')} | "
                    f"{summary(fleet)['median'] / summary(stock)['median']:.2f} |")
    return "\n".join(rows) + "\n"


def settings_table(data):
    by = {}
    for r in data["runs"]:
        by.setdefault((r["broker"], r["variant"]), []).append(r["per_second"])
    rows = ["| Broker | Variant | Tasks/s | vs the deployed fleet |", "|---|---|---|---|"]
    for (broker, variant), values in by.items():
        base = summary(by[(broker, "deployed fleet")])["median"]
        rows.append(f"| {broker} | {variant} | {fmt(values, '')} | {summary(values)['median'] / base:.2f} |")
    return "\n".join(rows) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("provision", help="P1, P2, P5: cold, no-op and one-change runs against the floor")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=provision)
    t = commands.add_parser("throughput", help="P4: tasks per second, the deployed fleet against stock Celery")
    t.add_argument("--brokers", nargs="+", default=["redis", "rabbitmq"])
    t.add_argument("--tasks", type=int, default=2000)
    t.add_argument("--rounds", type=int, default=3)
    t.set_defaults(func=throughput)
    c = commands.add_parser("settings", help="P4 priced: the fleet with one setting at a time back to Celery's default")
    c.add_argument("--brokers", nargs="+", default=["redis", "rabbitmq"])
    c.add_argument("--tasks", type=int, default=2000)
    c.add_argument("--rounds", type=int, default=3)
    c.set_defaults(func=settings)
    commands.add_parser("report", help="write BENCHMARKS.md's tables from bench/results").set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
