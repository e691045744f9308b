"""Packaging: everything is in pyproject.toml except one step.

The shipped rules, model and deploy files stay in the repository's
top-level ``rules/``, ``models/`` and ``deploy/`` directories (the only copy
anyone edits). Building a wheel copies them into the package as
``gateway/_shipped/``, where :mod:`gateway.paths` finds them with
importlib.resources once installed. An editable install (``make run``,
``pip install -e .``) reads the top-level directories directly.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("rules", "models", "deploy")


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in SHIPPED:
            target = Path(self.build_lib, "gateway", "_shipped", name)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(name, target,
                            ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))


setup(cmdclass={"build_py": BuildWithShippedFiles})
