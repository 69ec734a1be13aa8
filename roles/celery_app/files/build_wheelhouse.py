#!/usr/bin/env python3
"""Build an app's wheelhouse once on the control node and cache it by content.

Targets never reach a package index: they install from this archive with --no-index. The
archive holds the app's own wheel, a wheel for every locked requirement (downloaded for the
targets' Python and platform, not the control node's), and a requirements.txt that installs
exactly that set. Its name carries a hash of everything that went into it, so an unchanged app
costs one hash and no download, and a changed one is a new release.

Prints one JSON object: changed, archive, release, requirement.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Never part of a release: caches, build output, version control.
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build", "dist", ".venv", ".tox"}


def source_files(src: Path):
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                yield Path(root, name)


def content_hash(args) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([args.python_version, sorted(args.platform)]).encode())
    digest.update(Path(args.requirements).read_bytes())
    for path in source_files(Path(args.src)):
        digest.update(str(path.relative_to(args.src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def pip(*argv: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *argv], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"pip {argv[0]} failed (the app's requirements must resolve to wheels for the targets):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def build(args, digest: str) -> dict:
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"*-{digest}.tar"))
    if found:
        meta = json.loads(Path(str(found[0]) + ".json").read_text())
        return dict(meta, changed=False)

    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        wheels = Path(tmp, "wheels")
        # An absolute path: a bare "app" would be taken for a package name on the index.
        pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(Path(args.src).resolve()))
        (app_wheel,) = wheels.glob("*.whl")
        name, version = app_wheel.name.split("-")[:2]
        platforms = [f"--platform={p}" for p in args.platform]
        pip("download", "--no-deps", "--quiet", "--only-binary=:all:", f"--python-version={args.python_version}",
            "--implementation=cp", *platforms, "--dest", str(wheels), "--requirement", str(args.requirements))
        locked = [line.strip() for line in Path(args.requirements).read_text().splitlines() if re.match(r"^[A-Za-z0-9]", line)]
        (wheels / "requirements.txt").write_text("\n".join(locked + [f"{name}=={version}"]) + "\n")
        release = f"{version}-{digest}"
        archive = cache / f"{name}-{release}.tar"
        with tarfile.open(Path(tmp, "partial.tar"), "w") as tar:
            for path in sorted(wheels.iterdir()):
                tar.add(path, arcname=path.name)
        meta = {"archive": str(archive), "release": release, "requirement": f"{name}=={version}"}
        Path(str(archive) + ".json").write_text(json.dumps(meta))
        os.replace(Path(tmp, "partial.tar"), archive)
    return dict(meta, changed=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="the app's source directory (with pyproject.toml or setup.py)")
    parser.add_argument("--requirements", required=True, help="the app's locked requirements")
    parser.add_argument("--cache", required=True, help="where archives are kept")
    parser.add_argument("--python-version", required=True, help="the targets' Python, e.g. 3.11")
    parser.add_argument("--platform", action="append", default=[], help="a platform tag of the targets (repeatable)")
    args = parser.parse_args()
    print(json.dumps(build(args, content_hash(args))))


if __name__ == "__main__":
    main()
