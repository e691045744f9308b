"""Console logins against the site's LDAP directory (``[web] ldap_url``).

A login name that is not a local account is tried as a simple bind with
``[web] ldap_user_dn`` (``{name}`` replaced by the name, escaped as a DN
value); the user's role is the strongest of the ``[web] ldap_groups`` the
user is a member of (``member``/``uniqueMember`` naming the user's DN, or a
posixGroup's ``memberUid``), read as that user; a user in none of them
cannot log in. Local accounts are checked locally and never reach the
directory, so a directory that is down or slow locks no local admin out.

Hostile names cannot reach LDAP: the console only takes names of letters,
digits and ``. _ @ -``, and escapes them for the DN and the filter all the
same. An empty password is refused before any bind (an LDAP simple bind
with an empty password is an anonymous bind, which succeeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ROLE_ORDER = ("analyst", "admin")


class DirectoryDown(Exception):
    """The directory could not be asked (unreachable, timed out, TLS failed)."""


@dataclass(frozen=True)
class Directory:
    url: str
    user_dn: str
    groups: dict[str, str]
    timeout: float = 5.0

    @classmethod
    def of(cls, web) -> Directory | None:
        """From gateway.config's [web], or None when no directory is set."""
        if not web.ldap_url or not web.ldap_user_dn:
            return None
        return cls(web.ldap_url, web.ldap_user_dn, dict(web.ldap_groups), web.ldap_timeout)

    def role(self, name: str, password: str) -> str | None:
        """The console role of ``name`` if the directory takes the password
        and the user is in a mapped group; None otherwise. Raises
        DirectoryDown when the directory cannot be asked."""
        if not password:
            return None
        from ldap3 import BASE, Connection, Server
        from ldap3.core.exceptions import LDAPBindError, LDAPException
        from ldap3.utils.conv import escape_filter_chars
        from ldap3.utils.dn import escape_rdn

        dn = self.user_dn.replace("{name}", escape_rdn(name))
        server = Server(self.url, connect_timeout=self.timeout)
        try:
            connection = Connection(server, user=dn, password=password, read_only=True,
                                    receive_timeout=max(1, math.ceil(self.timeout)),
                                    raise_exceptions=False)
            if not connection.bind():
                if connection.result and connection.result.get("result") == 49:
                    return None  # invalidCredentials: a wrong password or no such user
                raise DirectoryDown(f"{self.url}: {connection.result.get('description')}"
                                    if connection.result else f"{self.url}: bind failed")
            try:
                found = None
                members = (f"(|(member={escape_filter_chars(dn)})"
                           f"(uniqueMember={escape_filter_chars(dn)})"
                           f"(memberUid={escape_filter_chars(name)}))")
                for group, role in self.groups.items():
                    member = connection.search(group, members, search_scope=BASE,
                                               attributes=[]) and connection.entries
                    if member and (found is None or
                                   ROLE_ORDER.index(role) > ROLE_ORDER.index(found)):
                        found = role
                return found
            finally:
                connection.unbind()
        except LDAPBindError:
            return None
        except (LDAPException, OSError) as exc:
            raise DirectoryDown(f"{self.url}: {exc}") from None
