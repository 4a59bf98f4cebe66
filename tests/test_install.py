"""The README's set-up installs gptcore itself, editable, so `import gptcore` works from any folder.

pip runs pyproject.toml's build backend (PEP 660's build_editable); this calls the same backend, puts the editable
wheel's files in a fresh site folder, and imports gptcore, subpackages included, from a process in another folder.
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_imports_from_any_folder(tmp_path):
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    for d in (wheels, site, elsewhere):
        d.mkdir()
    build = subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; "
                                                  f"print(build_meta.build_editable({str(wheels)!r}))"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = wheels / build.stdout.strip().splitlines()[-1]
    zipfile.ZipFile(wheel).extractall(site)
    subpackages = sorted(p.parent.name for p in (ROOT / "gptcore").glob("*/__init__.py"))
    code = (f"import site; site.addsitedir({str(site)!r}); import gptcore; print(gptcore.__file__); "
            + "".join(f"import gptcore.{name}; " for name in subpackages))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == ROOT / "gptcore" / "__init__.py"  # this checkout's files, not a copy
