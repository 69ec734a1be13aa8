"""Views of the host's Celery processes, from the apps the role takes (celery_worker_apps: the
fleet's model names each process and gives its command line)."""


def celery_worker_app_workers(apps):
    """Per app with worker groups on the host: the app, its workers' nodes (they answer `inspect
    ping`), their processes' names in the same order, and "<node> <queue>" for each queue a
    worker consumes."""
    found = []
    for app in apps:
        workers = [process for process in app["processes"] if process["kind"] == "worker"]
        if workers:
            found.append({"app": app, "nodes": [p["node"] for p in workers], "names": [p["name"] for p in workers],
                          "node_queues": [f"{p['node']} {queue}" for p in workers for queue in p["queues"]]})
    return found


def celery_worker_state_apps(apps, manager):
    """The apps part of library/celery_process_state.py's query: what the names of each app's
    processes start with under `manager`, the processes wanted, the files every process of the app
    reads at start (the environment file, the launcher, the `current` link) and those only one
    reads."""
    return [{"prefix": app["process_prefixes"][manager], "wanted": [p["name"] for p in app["processes"]],
             "inputs": [app["env_file"], f"{app['root']}/bin/run", f"{app['root']}/current"],
             "process_inputs": {p["name"]: p["inputs"] for p in app["processes"] if p["inputs"]}}
            for app in apps]


def celery_worker_unanswered(results):
    """The worker processes whose node did not answer `inspect ping` (each result: one app's ping,
    its item the app's entry of celery_worker_app_workers; all of them when the ping failed)."""
    unanswered = []
    for result in results:
        if "item" not in result or result.get("skipped"):
            continue
        answered = result.get("stdout", "") if result.get("rc") == 0 else ""
        unanswered += [name for node, name in zip(result["item"]["nodes"], result["item"]["names"]) if node not in answered]
    return unanswered


class FilterModule:
    def filters(self):
        return {"celery_worker_app_workers": celery_worker_app_workers, "celery_worker_state_apps": celery_worker_state_apps,
                "celery_worker_unanswered": celery_worker_unanswered}
