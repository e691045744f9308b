# The part of pymilter (which ships no types) that gateway/milter.py uses, so
# that mypy checks the milter strictly. Signatures from Milter/__init__.py 1.0.5.
from collections.abc import Callable
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])
_C = TypeVar("_C", bound=type)

# callback results
CONTINUE: int
REJECT: int
DISCARD: int
ACCEPT: int
TEMPFAIL: int
SKIP: int
# actions (Base._actions)
ADDHDRS: int
CHGBODY: int
ADDRCPT: int
DELRCPT: int
CHGHDRS: int
QUARANTINE: int
CHGFROM: int
SETSYMLIST: int
CURR_ACTS: int
# protocol steps (Base._protocol)
P_NR_RCPT: int
P_HDR_LEADSPC: int
P_RCPT_REJ: int
P_SKIP: int

def noreply(func: _F) -> _F: ...
def decode(strategy: str) -> Callable[[_F], _F]: ...
def header_leading_space(klass: _C) -> _C: ...

class Base:
    _actions: int
    _protocol: int
    def getsymval(self, sym: str) -> str | None: ...
    def setreply(self, rcode: str, xcode: str | None = None, msg: str | None = None,
                 *ml: str) -> int: ...
    def addheader(self, field: str, value: str, idx: int = -1) -> int: ...
    def chgheader(self, field: str, idx: int, value: str | None) -> int: ...  # None: remove
    def quarantine(self, reason: str) -> int: ...
    def negotiate(self, opts: list[int]) -> int: ...

factory: Callable[[], Base]

def connect_callback(ctx: Any, hostname: str, family: int, hostaddr: Any) -> int: ...
def close_callback(ctx: Any) -> int: ...
def negotiate_callback(ctx: Any, opts: list[int]) -> int: ...
