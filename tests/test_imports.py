"""Every module of the package imports on its own, whatever was imported before (no import cycles)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_every_module_imports_first():
    """Each module is imported in a state where no other ``multirater_monai`` module is loaded yet.

    An import cycle between subpackages shows only when a particular module is imported first (CI once failed on
    ``from multirater_monai.losses import CMNetLoss`` while the rest of the suite, importing the engines first, passed).
    """
    script = textwrap.dedent("""
        import importlib, pkgutil, sys, traceback
        import multirater_monai
        names = ["multirater_monai"] + [m.name for m in pkgutil.walk_packages(multirater_monai.__path__, "multirater_monai.")]
        failed = []
        for name in names:
            for loaded in [k for k in sys.modules if k == "multirater_monai" or k.startswith("multirater_monai.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as error:
                failed.append(f"{name}: {type(error).__name__}: {error}")
        print(len(names))
        print("\\n".join(failed))
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert int(lines[0]) > 40, "the package walk found too few modules"
    assert lines[1:] == [], "modules that fail to import first:\n" + "\n".join(lines[1:])
