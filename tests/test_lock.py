"""The committed lock (requirements/lock.txt) agrees with pyproject.toml and with what is installed."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)")


def _lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("requirements_lock", ROOT / "requirements" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pins(path: Path = LOCK) -> dict[str, tuple[Version, int]]:
    """name -> (version, number of hashes) for every pin in a requirements file with hashes."""
    pins: dict[str, tuple[Version, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            name = canonicalize_name(match[1])
            assert name not in pins, f"{name} is pinned twice"
            pins[name] = (Version(match[2]), 0)
        elif "--hash=sha256:" in line and name is not None:
            version, count = pins[name]
            pins[name] = (version, count + 1)
    return pins


def _direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


def test_the_lock_was_compiled_from_this_pyproject() -> None:
    lock = _lock_module()
    first = LOCK.read_text().splitlines()[0]
    assert first.startswith(lock.DIGEST_PREFIX)
    assert first.removeprefix(lock.DIGEST_PREFIX) == lock.input_digest(), (
        "pyproject.toml changed since the lock was made: run `make lock` and commit requirements/")


def test_the_digest_changes_with_any_dependency(tmp_path: Path) -> None:
    lock = _lock_module()
    text = (ROOT / "pyproject.toml").read_text()
    changed = tmp_path / "pyproject.toml"
    changed.write_text(text.replace('"msgpack>=1.1"', '"msgpack>=1.2"'))
    assert changed.read_text() != text
    assert lock.input_digest(changed) != lock.input_digest()


def test_every_direct_requirement_is_pinned_inside_its_range_with_hashes() -> None:
    pins = _pins()
    for req in _direct_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in the lock"
        version, hashes = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"locked {name}=={version} is outside {req}"
    assert all(hashes > 0 for _, hashes in pins.values())
    for name in _lock_module().NO_DEPS:
        assert canonicalize_name(name) in pins


def test_torch_is_the_cpu_build() -> None:
    version, hashes = _pins()["torch"]
    assert version.local == "cpu" and hashes == 1  # the one file on this machine's disk, never the CUDA build


def test_installed_versions_match_the_lock() -> None:
    """What `make install` put in this environment is exactly the lock (deselected by `make test-latest`)."""
    wrong = {}
    for name, (version, _) in _pins().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong[name] = "missing"
            continue
        if installed != version:
            wrong[name] = f"{installed} installed, {version} locked"
    assert wrong == {}
