"""The built-in checks, by name, known without importing them.

The one list of them: ``gateway.checks.BUILTIN`` (name -> ``module:Class``)
and the default ``[pipeline] checks`` come from it, and the configuration
knows from it which sections belong to built-in checks. A check's class
declares the rest: its ``name``, its ``symbols`` and, for a site's own
check, the ``section`` of its ``[check.NAME]`` settings (gateway.checks).
Importing this module imports nothing else of the gateway's: the
configuration reads it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Builtin:
    """A built-in check, known by name without importing its module."""

    name: str
    target: str  # "module:Class", imported on demand so a disabled check costs nothing
    section: str | None = None  # the gateway.toml section of its own settings
    default: bool = True  # in [pipeline] checks unless gateway.toml says otherwise


# In the order of the default [pipeline] checks.
REGISTRY: tuple[Builtin, ...] = (
    Builtin("limits", "gateway.checks.limits:LimitsCheck"),
    Builtin("headers", "gateway.checks.headers:HeaderSanityCheck"),
    Builtin("size", "gateway.checks.size:SizeCheck", "size"),
    Builtin("lists", "gateway.checks.lists:ListsCheck", "lists"),
    Builtin("rules", "gateway.checks.rules:RulesCheck"),
    Builtin("attachments", "gateway.checks.attachments:AttachmentsCheck"),
    Builtin("spf", "gateway.checks.spf:SpfCheck"),
    Builtin("dkim", "gateway.checks.dkim:DkimCheck"),
    Builtin("arc", "gateway.checks.arc:ArcCheck"),
    Builtin("dmarc", "gateway.checks.dmarc:DmarcCheck"),
    Builtin("sender", "gateway.checks.sender:SenderCheck"),
    Builtin("iprev", "gateway.checks.iprev:IprevCheck"),
    Builtin("tls", "gateway.checks.tls:TlsCheck"),
    Builtin("dnsbl", "gateway.checks.dnsbl:DnsblCheck"),
    Builtin("bayes", "gateway.checks.bayes:BayesCheck", "classifier"),
    Builtin("fuzzy", "gateway.checks.fuzzy:FuzzyCheck", "fuzzy"),
    Builtin("clamav", "gateway.checks.clamav:ClamavCheck", "clamav"),
    Builtin("identity", "gateway.checks.identity:IdentityCheck", "identity"),
    Builtin("links", "gateway.checks.links:LinksCheck", "links"),
)

# name -> "module:Class"
BUILTIN: dict[str, str] = {check.name: check.target for check in REGISTRY}
DEFAULT_CHECKS: tuple[str, ...] = tuple(check.name for check in REGISTRY if check.default)
# [check.NAME]: the settings of a site's own check.
SITE_SECTION = "check"
