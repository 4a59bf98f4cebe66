"""requirements.lock against the requirements files it is made from: every requirement at the repository root pinned
by a version that satisfies it, and no CUDA packages (the lock is the CPU install CI runs). bench/requirements.txt is
bench-only and not locked. When this fails after a requirements file changed: bash .ci/lock, and commit the lock."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
REFRESH = "bash .ci/lock"


def lock_pins() -> dict[str, Version]:
    """name -> pinned version, from the lock's `name==version` lines (comments and pip options skipped)."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"lock line not an exact pin: {line!r}"
        pins[canonicalize_name(req.name)] = Version(specs[0].version)
    return pins


def requirements(path: Path) -> list[Requirement]:
    """The requirements a file names itself (its -r includes are checked as files of their own)."""
    reqs = []
    for line in path.read_text().splitlines():
        line = re.split(r"(^|\s)#", line, maxsplit=1)[0].strip()
        if line and not line.startswith("-"):
            reqs.append(Requirement(line))
    return reqs


REQUIREMENT_FILES = sorted(ROOT.glob("requirements*.txt"))


def test_the_lock_says_how_to_refresh_it():
    assert REFRESH in LOCK.read_text()
    assert (ROOT / ".ci" / "lock").exists()


@pytest.mark.parametrize("path", REQUIREMENT_FILES, ids=lambda p: p.name)
def test_every_requirement_is_pinned_in_the_lock_by_a_version_that_satisfies_it(path):
    pins = lock_pins()
    stale = []
    for req in requirements(path):
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            stale.append(f"{req} is not in the lock")
        elif not req.specifier.contains(pin, prereleases=True):
            stale.append(f"{req} but the lock pins {pin}")
    assert not stale, f"requirements.lock is out of date with {path.name} ({'; '.join(stale)}): run {REFRESH}"


def test_the_lock_pins_the_cpu_torch_and_no_cuda_packages():
    pins = lock_pins()
    cuda = sorted(name for name in pins if name.startswith("nvidia-") or name == "triton")
    assert not cuda, f"the lock pulls CUDA packages {cuda}: regenerate it with {REFRESH} on a CPU machine"
    assert pins["torch"].local == "cpu", f"the lock pins torch {pins['torch']}, not the CPU build"


def test_the_checks_catch_a_stale_lock(tmp_path, monkeypatch):
    """The parser and the comparison, on a lock that misses a package and pins another too low."""
    lock = tmp_path / "requirements.lock"
    lock.write_text("# via bash .ci/lock\nnumpy==1.26.4\n    # via -r requirements.txt\ntorch==2.13.0+cpu\n")
    reqs = tmp_path / "requirements-x.txt"
    reqs.write_text("-r requirements.txt\ntorch==2.13.0  # the CPU build\nnumpy>=2\nfastapi\n")
    monkeypatch.setitem(globals(), "LOCK", lock)
    with pytest.raises(AssertionError) as failure:
        test_every_requirement_is_pinned_in_the_lock_by_a_version_that_satisfies_it(reqs)
    message = str(failure.value)
    assert "numpy>=2 but the lock pins 1.26.4" in message and "fastapi is not in the lock" in message
    assert "torch" not in message.split("(")[1]  # 2.13.0+cpu satisfies ==2.13.0: a local build is that version
