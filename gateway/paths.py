"""Where the shipped files live (rules, models), relative to the checkout."""

from __future__ import annotations

import os
from pathlib import Path

# The gateway runs from its checkout (``make run`` installs it editable), so
# the shipped rules/ and models/ sit next to the package. GATEWAY_HOME
# points elsewhere when the files were installed separately.
PROJECT_ROOT = Path(os.environ.get("GATEWAY_HOME", Path(__file__).resolve().parent.parent))
RULES_DIR = PROJECT_ROOT / "rules"
MODELS_DIR = PROJECT_ROOT / "models"
DEFAULT_RULES = RULES_DIR / "default.toml"
DEFAULT_CONFIG = Path("/etc/gateway/gateway.toml")
