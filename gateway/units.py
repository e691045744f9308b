"""The systemd units of an installation, from the shipped templates.

``deploy/systemd/gateway.service`` (the milter) and ``gateway-web.service``
(the console) are written for the default install: user ``gateway``,
``/var/lib/gateway``, the socket in ``/var/spool/postfix/gateway``.
``gateway init --unit`` rewrites the lines that name those for the user,
state directory, socket and program chosen, so that the hardening
(``ProtectSystem=strict`` makes everything else read-only) still lets the
gateway write where it must.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_ROOT = Path("/var/lib")
TEMPLATE_PROGRAM = "/opt/gateway/.venv/bin/gateway"
TEMPLATE_CONFIG = "/etc/gateway/gateway.toml"
UNITS = ("gateway.service", "gateway-web.service")


@dataclass(frozen=True)
class Installation:
    program: Path  # the gateway entry point
    config: Path
    user: str
    group: str  # the user's own group
    state_dir: Path
    socket_dir: Path | None = None  # a unix socket's directory (None: inet)
    socket_group: str = ""  # the group Postfix connects as
    spool_dir: Path | None = None  # [pipeline] spool_dir, if set

    @property
    def state_directory(self) -> str | None:
        """StateDirectory= for a state directory under /var/lib (systemd then
        creates it, owned by the user); None elsewhere."""
        if self.state_dir.is_relative_to(STATE_ROOT) and self.state_dir != STATE_ROOT:
            return str(self.state_dir.relative_to(STATE_ROOT))
        return None

    def writable(self, milter: bool) -> list[Path]:
        paths = [] if self.state_directory else [self.state_dir]
        if milter:
            paths += [p for p in (self.socket_dir, self.spool_dir) if p is not None]
        return paths


def render_unit(template: str, installation: Installation) -> str:
    """``template`` (a shipped unit) for ``installation``."""
    milter = "gateway run " in template  # the milter's unit, not the console's
    lines: list[str] = []
    for line in template.splitlines():
        key, _, _value = line.partition("=")
        if key == "User":
            line = f"User={installation.user}"
        elif key == "Group":
            line = f"Group={installation.group}"
        elif key == "SupplementaryGroups":
            if installation.socket_dir is None or not installation.socket_group:
                continue
            line = f"SupplementaryGroups={installation.socket_group}"
        elif key == "ExecStartPre" and "/usr/bin/install -d" in line:
            if installation.socket_dir is None:
                continue
            line = (f"ExecStartPre=+/usr/bin/install -d -o {installation.user} -g "
                    f"{installation.socket_group or installation.group} -m 750 "
                    f"{installation.socket_dir}")
        elif key == "ExecStart":
            line = line.replace(TEMPLATE_PROGRAM, str(installation.program)) \
                .replace(TEMPLATE_CONFIG, str(installation.config))
        elif key in ("StateDirectory", "StateDirectoryMode"):
            if installation.state_directory is None:
                continue
            if key == "StateDirectory":
                line = f"StateDirectory={installation.state_directory}"
        elif key == "ReadWritePaths":
            continue  # written after UMask=, from what this installation writes
        lines.append(line)
        if key == "UMask" and (paths := installation.writable(milter)):
            lines.append("ReadWritePaths=" + " ".join(str(p) for p in paths))
    return "\n".join(lines) + "\n"
