"""The model store: versions side by side, one of them current.

    STORE/versions/<version>/   model.npz, vocabulary.json, model.json
    STORE/current               symlink to the promoted version
    STORE/history.json          every promotion and rollback: who, when, figures

Promotion swaps the ``current`` link atomically (rename over the old link),
so a running gateway never sees half a model; it notices the change and
reloads (see :mod:`gateway.checks.bayes`). The previously promoted version
stays in the store for ``rollback``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit import actor
from gateway.classifier.model import META_FILE, ModelError, load_model


class StoreError(Exception):
    """A store operation that cannot be done, as one line."""


@dataclass(frozen=True)
class StoredVersion:
    version: str
    path: Path
    meta: dict[str, Any]
    current: bool


class ModelStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.current_link = self.root / "current"
        self.history_file = self.root / "history.json"

    # -- reading -------------------------------------------------------------------

    def current_version(self) -> str | None:
        if not self.current_link.is_symlink():
            return None
        return Path(os.readlink(self.current_link)).name

    def current_path(self) -> Path | None:
        version = self.current_version()
        return self.versions_dir / version if version else None

    def list(self) -> list[StoredVersion]:
        if not self.versions_dir.is_dir():
            return []
        current = self.current_version()
        found = []
        for path in sorted(self.versions_dir.iterdir()):
            try:
                meta = json.loads((path / META_FILE).read_text())
            except (OSError, json.JSONDecodeError):
                meta = {}
            found.append(StoredVersion(path.name, path, meta, path.name == current))
        return sorted(found, key=lambda v: str(v.meta.get("created", "")))

    def path_of(self, version: str) -> Path:
        path = self.versions_dir / version
        if not path.is_dir():
            known = ", ".join(v.version for v in self.list()) or "none"
            raise StoreError(f"{self.root}: no model version {version!r} (stored: {known})")
        return path

    def history(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.history_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{self.history_file}: unreadable: {exc}") from None

    # -- writing -------------------------------------------------------------------

    def add(self, model_dir: Path) -> str:
        """Copy a trained model folder into the store; returns its version."""
        try:
            model = load_model(model_dir)
        except ModelError as exc:
            raise StoreError(str(exc)) from None
        target = self.versions_dir / model.version
        if target.exists():
            return model.version
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f".{model.version}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(model_dir, staging)
        staging.rename(target)
        return model.version

    def set_current(self, version: str, action: str, details: dict[str, Any]) -> None:
        self.path_of(version)
        temporary = self.root / ".current.tmp"
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        os.symlink(Path("versions") / version, temporary)
        os.replace(temporary, self.current_link)  # atomic: readers see old or new
        self._append_history(action, version, details)

    def clear_current(self, action: str, details: dict[str, Any]) -> None:
        """Remove the ``current`` link: gateways go back to the shipped model
        (``models/default``) when they next look."""
        if self.current_link.is_symlink():
            self.current_link.unlink()
        self._append_history(action, "shipped", details)

    def _append_history(self, action: str, version: str, details: dict[str, Any]) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "action": action,
            "version": version,
            "user": actor(),
            **details,
        }
        history = self.history()
        history.append(entry)
        staged = self.history_file.with_suffix(".tmp")
        staged.write_text(json.dumps(history, indent=2) + "\n")
        os.replace(staged, self.history_file)

    def previous_version(self) -> str | None:
        """The version promoted before the current one: rollback walks back
        through the promotions one step at a time."""
        current = self.current_version()
        promoted = [e["version"] for e in self.history() if e.get("action") == "promote"]
        if current not in promoted:
            return None
        index = len(promoted) - 1 - promoted[::-1].index(current)
        for version in reversed(promoted[:index]):
            if version != current and (self.versions_dir / version).is_dir():
                return version
        return None
