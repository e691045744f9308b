"""Where the shipped files live: the rules, the model, the deploy files.

The repository keeps them in its top-level ``rules/``, ``models/`` and
``deploy/`` directories, which stay the only copy anyone edits. Two ways
to run the gateway, one lookup:

- from a checkout (``make run``, ``pip install -e .``): those directories,
  next to the package, so an edit takes effect at once;
- installed from a wheel or ``pip install .``: the same directories,
  copied into the package as ``gateway/_shipped/`` when the wheel is
  built (see ``setup.py``), found with :mod:`importlib.resources`.

``GATEWAY_HOME`` names another folder holding ``rules/`` and ``models/``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent
PACKAGED = "_shipped"


def _is_checkout(root: Path) -> bool:
    return (root / "pyproject.toml").is_file() and (root / "rules").is_dir()


def shipped_root() -> Path:
    """The folder holding ``rules/``, ``models/`` and ``deploy/``."""
    home = os.environ.get("GATEWAY_HOME")
    if home:
        return Path(home)
    if _is_checkout(SOURCE_ROOT):
        return SOURCE_ROOT
    # An installed package is a directory on disk (pip never installs a
    # wheel zipped), so this is a plain path.
    return Path(str(resources.files("gateway") / PACKAGED))


# PROJECT_ROOT: the checkout when running from one, else the packaged copy;
# either way the folder with rules/, models/ and deploy/ in it.
PROJECT_ROOT = shipped_root()
RULES_DIR = PROJECT_ROOT / "rules"
MODELS_DIR = PROJECT_ROOT / "models"
DEPLOY_DIR = PROJECT_ROOT / "deploy"
DEFAULT_RULES = RULES_DIR / "default.toml"
DEFAULT_CONFIG = Path("/etc/gateway/gateway.toml")
