"""The host's Celery processes, from the apps the role takes (celery_worker_apps)."""


def celery_worker_name(instance, prefix, manager):
    """The process manager's name of a process: supervisor program or systemd unit."""
    return f"{prefix}@{instance}.service" if manager == "systemd" else f"{prefix}-{instance}"


def celery_worker_processes(apps, group_defaults, manager):
    """Every Celery process of the host's apps: one per worker group (where the app's `workers`
    run; each group with every key filled in from group_defaults), beat (present on the app's beat
    host, absent elsewhere, so a moved beat stops where it was) and Flower likewise. Each: its
    app, prefix (celery-<app>), instance (worker-<group>, beat or flower), name (the supervisor
    program <prefix>-<instance> or the unit <prefix>@<instance>.service), kind, state, group for
    a worker, and for Flower its user and the file only it reads (its configuration, which
    celery_flower writes: a Flower started before it changed restarts)."""
    processes = []
    for app in apps:
        prefix = f"celery-{app['name']}"

        def process(instance, **keys):
            return dict(keys, app=app, prefix=prefix, instance=instance, name=celery_worker_name(instance, prefix, manager))

        for entry in app["worker_groups"] if app["workers"] else []:
            group = dict(group_defaults, **entry)
            processes.append(process(f"worker-{group['name']}", kind="worker", state=group["state"], group=group))
        # Beat keeps its schedule in the app's home, so a restart neither repeats nor skips a task.
        processes.append(process("beat", kind="beat", state="present" if app["beat"] else "absent",
                                 schedule=f"{app['home']}/{app['name']}-beat-schedule"))
        processes.append(process("flower", kind="flower", state="present" if app["flower"] else "absent",
                                 user=app["flower_user"], inputs=[app["flower_config_file"]]))
    return processes


def celery_worker_state_apps(apps, processes):
    """The apps part of library/celery_process_state.py's query: each app's prefix, the instances
    wanted, the files every process of the app reads at start (the environment file, the launcher,
    the `current` link) and those only one reads."""
    return [{"prefix": f"celery-{app['name']}",
             "wanted": [p["instance"] for p in processes if p["app"]["name"] == app["name"] and p["state"] == "present"],
             "inputs": [app["env_file"], f"{app['root']}/bin/run", f"{app['root']}/current"],
             "process_inputs": {p["instance"]: p["inputs"] for p in processes
                                if p["app"]["name"] == app["name"] and p["state"] == "present" and "inputs" in p}}
            for app in apps]


def celery_worker_unanswered(results):
    """The worker processes whose node did not answer `inspect ping` (each result: one app's ping,
    its item the app's nodes and their processes' names; all of them when the ping failed)."""
    unanswered = []
    for result in results:
        if "item" not in result or result.get("skipped"):
            continue
        answered = result.get("stdout", "") if result.get("rc") == 0 else ""
        unanswered += [name for node, name in zip(result["item"]["nodes"], result["item"]["names"]) if node not in answered]
    return unanswered


class FilterModule:
    def filters(self):
        return {"celery_worker_name": celery_worker_name, "celery_worker_processes": celery_worker_processes,
                "celery_worker_state_apps": celery_worker_state_apps, "celery_worker_unanswered": celery_worker_unanswered}
