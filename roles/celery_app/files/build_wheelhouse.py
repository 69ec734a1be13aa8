#!/usr/bin/env python3
"""Build an app's release once on the control node and cache it by content.

Targets never reach a package index: they install from this archive with --no-index. The app
is either a package (pyproject.toml or setup.py: it is built into a wheel) or a plain project
directory, the tutorial's layout (modules at its root: they are shipped as source). Its
requirements are resolved here, for the targets' Python and platform rather than the control
node's, into a wheel for every distribution the app needs; the archive holds

    wheelhouse/   those wheels and a requirements.txt that installs exactly that set; with
                  --extra (tools that run beside the app, such as Flower), their wheels too and
                  extras.txt, the app's set resolved together with them, for the tools' venvs
    boot/         celery_fleet.py, the entry point that loads and configures the app
    source/       the project's files, for an app without packaging metadata

Its name carries a hash of everything that went into it, so an unchanged app costs one hash and
no download, and a changed one is a new release. Prints one JSON object: changed, archive,
release, requirement, celery. With --celery-extra (the broker's: redis, sqs), the app's
Celery is resolved with that extra, so an app that pins plain `celery==X` gets its transport's
dependencies. Exits 2 with a message naming the problem when the requirements
do not resolve to wheels, do not pin what they name, or bring a Celery this fleet does not run.
"""

import argparse
import fcntl
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

# Never part of a release: caches, build output, version control, local databases and secrets.
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build", "dist", ".venv", "venv", ".tox", "node_modules"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".sqlite3", ".env")
# The requirement files looked for in a project, in order, when none is named.
REQUIREMENT_FILES = ("requirements.lock", "requirements.txt")


class BuildError(Exception):
    """The app cannot become a release; the message says why and what to change."""


def source_files(src: Path):
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            if not name.endswith(SKIP_SUFFIXES):
                yield Path(root, name)


def is_package(src: Path) -> bool:
    return (src / "pyproject.toml").exists() or (src / "setup.py").exists()


def requirements_file(args) -> Path | None:
    if args.requirements:
        return Path(args.requirements)
    return next((Path(args.src, name) for name in REQUIREMENT_FILES if Path(args.src, name).exists()), None)


def requirement_lines(path: Path | None) -> list[str]:
    if path is None:
        return []
    if not path.exists():
        raise BuildError(f"celery_app_requirements: {path} does not exist")
    lines = [line.split(" #")[0].strip() for line in path.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    unpinned = [line for line in lines if "==" not in line]
    if unpinned:
        raise BuildError(f"celery_app_requirements: pin every requirement of {path} with == so a release is "
                         f"reproducible (its dependencies are resolved and recorded in the release); not pinned: {unpinned}")
    return lines


def extra_lines(args) -> list[str]:
    unpinned = [line for line in args.extra if "==" not in line]
    if unpinned:
        raise BuildError(f"celery_app_extra_requirements: pin every extra requirement with ==; not pinned: {unpinned}")
    return sorted(args.extra)


def content_hash(args, requirements: Path | None) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([args.python_version, sorted(args.platform), args.celery, sorted(args.extra),
                              sorted(args.celery_extra)]).encode())
    digest.update(Path(args.boot).read_bytes())
    if requirements is not None and requirements.exists():
        digest.update(requirements.read_bytes())
    for path in source_files(Path(args.src)):
        # The executable bit too: it travels in the archive (Django's manage.py needs it).
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        digest.update(str(path.relative_to(args.src)).encode() + b"\0" + executable + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def pip(*argv: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *argv], capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        errors = [line for line in output if "ERROR" in line or "error" in line.lower()] or output
        raise BuildError(f"celery_app_requirements: pip {argv[0]} failed: the app's requirements must resolve to wheels for CPython "
                         f"{TARGET['python_full_version']} on {', '.join(ARGS.platform)}, since targets install with no index:\n"
                         + "\n".join(errors[-15:]))
    return result.stdout


def target_options(args) -> list[str]:
    return ["--only-binary=:all:", f"--python-version={args.python_version}", "--implementation=cp",
            *(f"--platform={p}" for p in args.platform)]


def missing_for_target(installs: list[dict]) -> list[str]:
    """Requirements the targets' interpreter needs but pip, evaluating environment markers with the
    control node's interpreter, left out (redis needs async-timeout only below Python 3.11.3)."""
    resolved = {canonicalize_name(item["metadata"]["name"]) for item in installs}
    missing = []
    for item in installs:
        extras = [""] + list(item.get("requested_extras") or [])
        for text in item["metadata"].get("requires_dist") or []:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate(dict(TARGET, extra=e)) for e in extras):
                continue
            if canonicalize_name(req.name) not in resolved:
                req.marker = None
                missing.append(str(req))
    return sorted(set(missing))


def resolve(args, lines: list[str], app_wheel: Path | None, scratch: Path) -> list[dict]:
    """Resolve the app's dependencies for the targets; returns pip's install report entries."""
    added: list[str] = []
    for _ in range(5):
        report = scratch / "report.json"
        pip("install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report), "--target", str(scratch / "target"),
            *target_options(args), *lines, *added, *([str(app_wheel)] if app_wheel else []))
        installs = json.loads(report.read_text())["install"]
        missing = missing_for_target(installs)
        if not missing:
            return installs
        added += missing
    raise BuildError(f"celery_app_requirements: resolving for the targets' Python never settled; still missing {missing}")


def check_celery(args, installs: list[dict]) -> str:
    versions = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    if "celery" not in versions:
        raise BuildError(f"celery_app_requirements: the app does not require celery; add the Celery it was written for, "
                         f"pinned (celery-fleet runs celery {args.celery})")
    if versions["celery"] not in SpecifierSet(args.celery):
        raise BuildError(f"celery_app_requirements: the app requires celery {versions['celery']}; "
                         f"celery-fleet runs celery {args.celery} (celery_app_supported_celery)")
    return versions["celery"]


def pinned(installs: list[dict], app_name: str | None) -> list[str]:
    return sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installs
                  if canonicalize_name(i["metadata"]["name"]) != app_name)


def build(args, digest: str, lines: list[str], extras: list[str]) -> dict:
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    # One build of a release at a time: a second run (another project's, or a second lane of the
    # suite) waits, then finds the archive; setuptools also writes build/ into the app's tree.
    with open(cache / f".{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_locked(args, cache, digest, lines, extras)


def build_locked(args, cache: Path, digest: str, lines: list[str], extras: list[str]) -> dict:
    found = sorted(cache.glob(f"*-{digest}.tar"))
    if found and Path(str(found[0]) + ".json").exists():
        return dict(json.loads(Path(str(found[0]) + ".json").read_text()), changed=False)

    src = Path(args.src).resolve()
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp = Path(tmp)
        wheels = tmp / "wheelhouse"
        app_wheel = None
        if is_package(src):
            # An absolute path: a bare "app" would be taken for a package name on the index.
            pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp / "app"), str(src))
            (app_wheel,) = (tmp / "app").glob("*.whl")
        installs = resolve(args, lines, app_wheel, tmp)
        celery = check_celery(args, installs)
        if args.celery_extra:
            # What the broker's transport imports (kombu's Redis transport needs `packaging`), at
            # the app's own Celery: the app's requirements stay as its authors wrote them.
            lines = lines + [f"celery[{','.join(sorted(args.celery_extra))}]=={celery}"]
            installs = resolve(args, lines, app_wheel, tmp)
        app_name = canonicalize_name(app_wheel.name.split("-")[0]) if app_wheel else None
        pins = pinned(installs, app_name)
        # The extras are resolved together with the app, so a tool's venv holds the app's own
        # stack (Flower loads the app to connect as its workers do).
        extra_pins = pinned(resolve(args, lines + extras, app_wheel, tmp), app_name) if extras else []
        pip("download", "--no-deps", "--quiet", *target_options(args), "--dest", str(wheels), *sorted(set(pins + extra_pins)))
        if app_wheel:
            name, version = app_wheel.name.split("-")[:2]
            os.replace(app_wheel, wheels / app_wheel.name)
            requirement, release = f"{name}=={version}", f"{version}-{digest}"
        else:
            name, requirement, release = src.name, f"{src.name} (source) {digest}", f"source-{digest}"
        sets = {"requirements.txt": pins}
        if extras:
            sets["extras.txt"] = extra_pins
        for filename, names in sets.items():
            (wheels / filename).write_text("\n".join(names + ([requirement] if app_wheel else [])) + "\n")
            # The proof that targets need no index: each set installs from these files alone.
            pip("install", "--dry-run", "--quiet", "--ignore-installed", "--no-index", "--find-links", str(wheels),
                "--target", str(tmp / "target"), *target_options(args), "--requirement", str(wheels / filename))

        archive = cache / f"{canonicalize_name(name)}-{release}.tar"
        with tarfile.open(tmp / "partial.tar", "w") as tar:
            tar.add(wheels, arcname="wheelhouse")
            tar.add(args.boot, arcname="boot/celery_fleet.py")
            if not app_wheel:
                for path in source_files(src):
                    tar.add(path, arcname=f"source/{path.relative_to(src)}", recursive=False)
        meta = {"archive": str(archive), "release": release, "requirement": requirement, "celery": celery, "extras": extras}
        os.replace(tmp / "partial.tar", archive)
        Path(str(archive) + ".json").write_text(json.dumps(meta))
    return dict(meta, changed=True)


def main() -> None:
    global ARGS, TARGET
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="the app's source directory")
    parser.add_argument("--requirements", default="", help="its pinned requirements (default: requirements.lock or requirements.txt in --src)")
    parser.add_argument("--boot", required=True, help="celery_fleet.py, the entry point shipped with every release")
    parser.add_argument("--celery", required=True, help="the Celery versions the fleet runs, a specifier such as >=5.5,<5.8")
    parser.add_argument("--cache", required=True, help="where archives are kept")
    parser.add_argument("--python-version", required=True, help="the targets' Python, in full (e.g. 3.11.2: markers depend on it)")
    parser.add_argument("--platform", action="append", default=[], help="a platform tag of the targets (repeatable)")
    parser.add_argument("--extra", action="append", default=[],
                        help="a pinned requirement of a tool that runs beside the app, e.g. flower==2.2.0 (repeatable)")
    parser.add_argument("--celery-extra", action="append", default=[],
                        help="an extra of Celery the broker or result backend needs, e.g. redis (repeatable)")
    ARGS = args = parser.parse_args()
    # Environment markers as the targets' interpreter (CPython on Linux x86_64) evaluates them.
    TARGET = {"python_version": ".".join(args.python_version.split(".")[:2]), "python_full_version": args.python_version,
              "implementation_name": "cpython", "platform_python_implementation": "CPython",
              "implementation_version": args.python_version, "sys_platform": "linux", "platform_system": "Linux",
              "os_name": "posix", "platform_machine": "x86_64", "platform_release": "", "platform_version": ""}
    try:
        if not Path(args.src).is_dir():
            raise BuildError(f"celery_app_src: {args.src} is not a directory on the control node")
        requirements = requirements_file(args)
        lines = requirement_lines(requirements)
        if not lines and not is_package(Path(args.src)):
            raise BuildError(f"celery_app_src: {args.src} has no pyproject.toml or setup.py and no requirements file "
                             f"({' or '.join(REQUIREMENT_FILES)}): name the app's requirements with celery_app_requirements")
        print(json.dumps(build(args, content_hash(args, requirements), lines, extra_lines(args))))
    except BuildError as error:
        print(error, file=sys.stderr)
        sys.exit(2)


ARGS: argparse.Namespace
TARGET: dict = {"python_full_version": platform.python_version()}

if __name__ == "__main__":
    main()
