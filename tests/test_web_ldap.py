"""Console logins against LDAP (issue 28): Debian's slapd on loopback with
a generated config and LDIF (tests/lab/slapd.py), groups mapped to roles
by [web] ldap_groups. Local accounts keep working, and keep working when
the directory is down; the login limits count wrong directory passwords
like any others; an empty password (an anonymous bind) and names that
would be LDAP syntax never log in. (The browser test logs in as a
directory user in Chromium: tests/test_web_browser.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.web.console import Console, ConsoleError, LoginRefused
from gateway.web.directory import Directory
from tests.lab.slapd import ROOT_DN, ROOT_PASSWORD, SUFFIX, SlapdServer, available
from tests.test_web import PASSWORD, Clock, cheap_hashes, csrf_of, login

if not available():
    pytest.skip("Debian's slapd is not installed (deploy/debian-packages.txt)",
                allow_module_level=True)

ADMINS = f"cn=mail-admins,ou=groups,{SUFFIX}"
ANALYSTS = f"cn=mail-analysts,ou=groups,{SUFFIX}"
HELPDESK = f"cn=helpdesk,ou=groups,{SUFFIX}"
LDAP_PASSWORD = "directory password 1"


def person(uid: str) -> str:
    return (f"dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nobjectClass: "
            f"posixAccount\nuid: {uid}\ncn: {uid.title()}\nsn: {uid.title()}\n"
            f"uidNumber: {1000 + len(uid)}\ngidNumber: 1000\nhomeDirectory: /home/{uid}\n"
            f"userPassword: {LDAP_PASSWORD}\n\n")


LDIF = (f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
        "o: Example\n\n"
        f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n"
        f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n"
        + person("alice") + person("bob") + person("carol") + person("dave")
        + f"dn: {ADMINS}\nobjectClass: groupOfNames\ncn: mail-admins\n"
          f"member: uid=alice,ou=people,{SUFFIX}\nmember: {ROOT_DN}\n\n"
        + f"dn: {ANALYSTS}\nobjectClass: groupOfNames\ncn: mail-analysts\n"
          f"member: uid=alice,ou=people,{SUFFIX}\nmember: uid=bob,ou=people,{SUFFIX}\n\n"
        + f"dn: {HELPDESK}\nobjectClass: posixGroup\ncn: helpdesk\ngidNumber: 2000\n"
          "memberUid: dave\n\n")


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    with SlapdServer(tmp_path_factory.mktemp("slapd"), LDIF) as server:
        yield server


def web_section(url: str) -> str:
    return (f'ldap_url = "{url}"\nldap_user_dn = "uid={{name}},ou=people,{SUFFIX}"\n'
            f'ldap_groups = {{ "{ADMINS}" = "admin", "{ANALYSTS}" = "analyst", '
            f'"{HELPDESK}" = "analyst" }}\nldap_timeout = 3\n')


def directory_for(url: str) -> Directory:
    config = parse_config("[web]\n" + web_section(url), "test")
    found = Directory.of(config.web)
    assert found is not None
    return found


@pytest.fixture
def console(tmp_path: Path, slapd):
    from gateway.quarantine.store import QuarantineStore

    store = QuarantineStore(f"sqlite:///{tmp_path}/q.db")
    found = Console(store, login_attempts=3, directory=directory_for(slapd.url))
    cheap_hashes(found)
    found.add_user("root-admin", "admin", PASSWORD)
    yield found
    store.close()


def test_directory_users_log_in_with_the_role_their_groups_give(console):
    alice = console.authenticate("alice", LDAP_PASSWORD, "192.0.2.1")
    assert (alice.role, alice.directory) == ("admin", True)  # the strongest of her groups
    assert console.authenticate("bob", LDAP_PASSWORD, "192.0.2.1").role == "analyst"
    assert console.authenticate("dave", LDAP_PASSWORD, "192.0.2.1").role == "analyst"  # posix
    with pytest.raises(LoginRefused, match="wrong name or password"):
        console.authenticate("carol", LDAP_PASSWORD, "192.0.2.1")  # in no mapped group
    assert console.user("carol") is None
    assert console.authenticate("root-admin", PASSWORD, "192.0.2.1").role == "admin"  # local
    with pytest.raises(ConsoleError, match="directory"):
        console.set_password("alice", "a new password here")
    assert console.user("alice").as_dict()["source"] == "ldap"


def test_no_anonymous_bind_no_ldap_syntax_and_the_limits_apply(console):
    console.clock = Clock()
    for name, password in (("bob", ""), ("*", LDAP_PASSWORD), ("bob)(uid=*", LDAP_PASSWORD),
                           ("uid=bob,ou=people", LDAP_PASSWORD), ("nobody", LDAP_PASSWORD)):
        with pytest.raises(LoginRefused, match="wrong name or password"):
            console.authenticate(name, password, "198.51.100.9")
    for _ in range(3):
        with pytest.raises(LoginRefused, match="wrong name or password"):
            console.authenticate("bob", "not his password", "198.51.100.66")
    with pytest.raises(LoginRefused, match="too many failed logins") as caught:
        console.authenticate("bob", LDAP_PASSWORD, "198.51.100.66")  # right, but waits
    assert caught.value.retry_after == 30
    assert console.authenticate("bob", LDAP_PASSWORD, "198.51.100.7").name == "bob"


def test_a_role_follows_the_groups_and_a_local_disable_holds(console, slapd):
    from ldap3 import MODIFY_ADD, MODIFY_DELETE, Connection

    assert console.authenticate("alice", LDAP_PASSWORD, "192.0.2.1").role == "admin"
    root = Connection(slapd.url, ROOT_DN, ROOT_PASSWORD, auto_bind=True)
    try:
        assert root.modify(ADMINS, {"member": [(MODIFY_DELETE,
                                                [f"uid=alice,ou=people,{SUFFIX}"])]}), root.result
        assert console.authenticate("alice", LDAP_PASSWORD, "192.0.2.1").role == "analyst"
    finally:
        root.modify(ADMINS, {"member": [(MODIFY_ADD, [f"uid=alice,ou=people,{SUFFIX}"])]})
        root.unbind()
    console.set_disabled("alice")
    with pytest.raises(LoginRefused):
        console.authenticate("alice", LDAP_PASSWORD, "192.0.2.1")


def test_a_directory_that_is_down_locks_no_local_admin_out(tmp_path: Path, slapd):
    from gateway.lab.postfix import free_port
    from gateway.quarantine.store import QuarantineStore

    store = QuarantineStore(f"sqlite:///{tmp_path}/q.db")
    console = Console(store, directory=directory_for(f"ldap://127.0.0.1:{free_port()}"))
    cheap_hashes(console)
    console.add_user("root-admin", "admin", PASSWORD)
    try:
        with pytest.raises(LoginRefused, match=r"directory \(LDAP\) did not answer"):
            console.authenticate("alice", LDAP_PASSWORD, "192.0.2.1")
        assert console.authenticate("root-admin", PASSWORD, "192.0.2.1").role == "admin"
        for _ in range(10):  # a dead directory is not counted against the user
            with pytest.raises(LoginRefused, match="did not answer"):
                console.authenticate("alice", LDAP_PASSWORD, "192.0.2.1")
    finally:
        store.close()


def test_the_login_page_takes_directory_users(tmp_path: Path, slapd):
    from tests.test_web import console_app

    app, store, console = console_app(tmp_path, web_section(slapd.url))
    try:
        client = app.test_client()
        done = login(client, "alice", LDAP_PASSWORD)
        assert done.status_code == 302
        page = client.get("/admin/users")
        assert page.status_code == 200 and "LDAP" in page.text
        token = csrf_of(client)
        refused = client.post("/admin/users/alice", data={
            "csrf": token, "action": "password", "password": "a long new password"},
            follow_redirects=True)
        assert "its password is the directory" in refused.text
        assert login(app.test_client(), "carol", LDAP_PASSWORD).status_code == 401
        assert [e["action"] for e in console.audit_trail(actor="carol")] == ["login-failed"]
    finally:
        app.extensions["gateway"]["renderer"].close()
        store.close()
