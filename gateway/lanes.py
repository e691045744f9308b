"""Which waiting message gets the next free worker.

The worker pool (gateway.workers) runs about one process per core, and a
message holds one for as long as its checks take. A few messages that cost
far more than most must not hold them all. Each waiting message is in a
lane:

- ``costly``: from a client one of whose messages, in the last
  ``COSTLY_FOR`` seconds, used more than ``[pipeline] heavy_cpu_seconds``
  of a worker's CPU (so far, if it still runs), was stopped at the
  deadline or crashed its worker;
- ``large``: over ``[pipeline] heavy_message_bytes``, from any other client;
- ``ordinary``: the rest.

The costly lane and the large lane may each hold all of ``[pipeline]
workers`` but one, and costly mail gets a free worker only when no other
waiting message can take it. Both limits hold while mail that goes before
theirs has come in the last ``ALONE_AFTER`` seconds from a client not
costly now (:class:`Arrivals`): when no other mail is about, costly or
large mail may hold all of ``[pipeline] workers`` (a site's one relay,
costly for five minutes after one heavy message, would otherwise have all
its mail checked on one worker). So a client looping
crafted messages holds at most all workers but one while others send
mail, waits behind everyone else, and mail from every other client, of
any size, finds a worker (while costly mail holds one, the pool keeps one
more idle for other mail, beyond ``workers``: see gateway.workers).

Why by what a client's mail cost, and not by size alone: size says little
about cost. Of the fuzz bench's pathological shapes a 205 KiB message takes
0.7 s of CPU and a 547 KiB one 10 ms, while no message of the SpamAssassin
corpus took over 63 ms (``tests/bench/fuzz.py --cpu``). A lane by size
put legitimate 300 KiB mail in one queue with an attacker's crafted mail:
with 8 of those in flight it waited 6.4 s at the median, and some got a
451, while smaller mail passed. A message's cost is known only as it runs,
but its client's recent cost is known before. Why not a fixed share of
workers per client: it would hold back a site's one relay (all its mail
from one address) when nothing it sent was costly; here only clients whose
mail was costly wait.

The limit of the idea: an attacker with many addresses, each sending one
crafted message, is new each time. Then the large lane still keeps a worker
for mail under ``heavy_message_bytes``, and large mail waits its turn
(``budget + grace`` at most, then a 4xx: the sender retries).

A client is its IPv4 address or its IPv6 /64 (what one subscriber gets).
Mail with no client address (the scan protocol without one) is never
costly: there is nobody to tell apart, and it would put all such mail in
one lane.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Literal, Protocol, TypeVar

Lane = Literal["ordinary", "large", "costly"]

# How long a client's costly message keeps its mail in the costly lane: a
# client looping crafted mail stays there; one that sent a single expensive
# message (a huge legitimate attachment) is back after five minutes.
COSTLY_FOR = 300.0
# The costly and the large lane are held back only while mail that goes
# before theirs came in this many seconds (lane_limits).
ALONE_AFTER = 30.0
# Clients remembered at most (the least recently costly are forgotten
# first): an attacker with many addresses cannot grow the table.
MAX_CLIENTS = 10_000
IPV6_CLIENT_PREFIX = 64


def client_of(address: str | None) -> str | None:
    """The client a message's SMTP client address belongs to: the IPv4
    address, or the IPv6 /64; None when there is none or it is not an IP
    address (Postfix says "unknown" for some)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


class CostlyClients:
    """The clients whose mail was costly lately, with when it last was."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 remember: float = COSTLY_FOR, capacity: int = MAX_CLIENTS):
        self._clock = clock
        self._remember = remember
        self._capacity = capacity
        self._last: OrderedDict[str, float] = OrderedDict()  # oldest first

    def record(self, client: str | None) -> None:
        if client is None:
            return
        self._last[client] = self._clock()
        self._last.move_to_end(client)
        while len(self._last) > self._capacity:
            self._last.popitem(last=False)

    def __contains__(self, client: object) -> bool:
        if not isinstance(client, str):
            return False
        at = self._last.get(client)
        if at is None:
            return False
        if self._clock() - at > self._remember:
            del self._last[client]
            return False
        return True

    def __len__(self) -> int:
        return len(self._last)


def lane_of(costly: bool, size: int, heavy_bytes: int) -> Lane:
    if costly:
        return "costly"
    return "large" if size > heavy_bytes else "ordinary"


class Waiting(Protocol):
    @property
    def lane(self) -> Lane: ...


W = TypeVar("W", bound=Waiting)


class Arrivals:
    """When mail that goes before costly mail last came, by client and lane
    (ordinary, large), for :func:`lane_limits`.

    Mail is "about" only if it comes from a client that is not costly now:
    a client's own mail from before it was known costly holds nothing back.
    A site whose mail all comes through one relay sent ordinary mail until
    one heavy message made the relay costly; counted as other mail, that
    mail held the relay's next half minute to all workers but one (at 50
    sessions the throughput bench ran at half its rate in such a round).

    Kept in order of arrival, at most ``window`` seconds back and
    ``capacity`` entries, so a lookup reads from the newest and stops at the
    first entry of each lane from a client not costly."""

    def __init__(self, window: float = ALONE_AFTER, capacity: int = 2 * MAX_CLIENTS):
        self._window = window
        self._capacity = capacity
        self._last: OrderedDict[tuple[str | None, Lane], float] = OrderedDict()

    def record(self, client: str | None, lane: Lane, at: float) -> None:
        if lane == "costly":
            return  # costly mail holds nobody back
        key = (client, lane)
        self._last[key] = at
        self._last.move_to_end(key)
        while self._last and (len(self._last) > self._capacity or
                              at - next(iter(self._last.values())) >= self._window):
            self._last.popitem(last=False)

    def latest(self, now: float, costly: Container[str | None]) -> dict[Lane, float]:
        """When each lane's newest mail from a client not in ``costly``
        came, over the last ``window`` seconds."""
        found: dict[Lane, float] = {}
        for (client, lane), at in reversed(self._last.items()):
            if now - at >= self._window or len(found) == 2:
                break
            if lane not in found and client not in costly:
                found[lane] = at
        return found


def lane_limits(arrived: Mapping[Lane, float], now: float, limit: int, alone: int,
                alone_after: float = ALONE_AFTER) -> dict[Lane, int]:
    """The workers the costly and the large lane may hold: ``limit`` while
    mail that goes before theirs came in the last ``alone_after`` seconds
    (``arrived``: when each lane's last message came); else ``alone`` (all
    of ``[pipeline] workers``: the pool's spare, started while costly mail
    runs, stays for other mail). A lane is held back for other mail, and
    when there is none about there is nobody to hold it back for: a site
    whose mail all comes through one relay would otherwise check it on one
    worker for COSTLY_FOR seconds after one heavy message."""
    def about(lanes: tuple[Lane, ...]) -> bool:
        return any(now - arrived.get(lane, float("-inf")) < alone_after for lane in lanes)

    return {"costly": limit if about(("ordinary", "large")) else alone,
            "large": limit if about(("ordinary",)) else alone}


def next_to_go(waiting: Iterable[W], busy: Mapping[Lane, int],
               limit: int | Mapping[Lane, int]) -> W | None:
    """The waiting message that gets a free worker: the first to have come
    whose lane has room (the costly and the large lane hold at most
    ``limit`` workers each, or their own of :func:`lane_limits`), costly
    mail only when no other can go."""
    limits = limit if isinstance(limit, Mapping) else {"costly": limit, "large": limit}
    costly: W | None = None
    for turn in waiting:
        if turn.lane != "ordinary" and busy.get(turn.lane, 0) >= limits[turn.lane]:
            continue
        if turn.lane != "costly":
            return turn
        if costly is None:
            costly = turn
    return costly
