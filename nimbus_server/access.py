"""Users, their tokens, and Girder's access lists (PLATFORM.md §4, §10).

A folder, a configuration and a dataset view each have their own access list: the app's
Share (`dataset_view/share`) grants all three, Girder's own folder sharing only the
folder. A user who can read the folder but not its view finds no view, so no layers.
"""

from __future__ import annotations

import secrets
from typing import Any

from nimbus_server.errors import ApiError
from nimbus_server.paging import now
from nimbus_server.schema import ObjectIdFactory

NONE, READ, WRITE, ADMIN = -1, 0, 1, 2
# Who a request without a known token is (Girder takes an unknown token as none): a
# public read runs for it and sees only what is public.
ANONYMOUS: dict = {"_id": None, "login": None, "admin": False}
_LEVEL_NAMES = {READ: "Read", WRITE: "Write", ADMIN: "Admin"}


def new_access(owner_id: str) -> dict:
    """A new document's access list: its creator is its admin."""
    return {"groups": [], "users": [{"flags": [], "id": owner_id, "level": ADMIN}]}


def grant(doc: dict, user_id: str, level: int) -> None:
    """Give `user_id` `level` on `doc` (NONE removes the user from the list)."""
    users = [entry for entry in doc["access"]["users"] if entry["id"] != user_id]
    if level > NONE:
        users.append({"flags": [], "id": user_id, "level": level})
    doc["access"]["users"] = users


def level_of(doc: dict, user: dict) -> int:
    if user.get("admin"):
        return ADMIN
    levels = [entry["level"] for entry in doc.get("access", {}).get("users", []) if entry["id"] == user["_id"]]
    if doc.get("public"):
        levels.append(READ)
    return max(levels, default=NONE)


def require(doc: dict, user: dict, level: int, model: str) -> None:
    """Girder's requireAccess: 403 "Read access denied for folder <id> (user <id>).";
    401 and "(user None)" for the anonymous user."""
    if level_of(doc, user) < level:
        raise ApiError(401 if user["_id"] is None else 403,
                       f"{_LEVEL_NAMES[level]} access denied for {model} {doc['_id']} (user {user['_id']}).", "access")


def filtered(doc: dict, user: dict, model: str, keep_access: bool = False) -> dict:
    """A document as Girder answers it: its caller's `_accessLevel`, its `_modelType`,
    its access list only where the model exposes it (dataset views)."""
    shown = {key: value for key, value in doc.items() if keep_access or key != "access"}
    return {**shown, "_accessLevel": level_of(doc, user), "_modelType": model}


class Users:
    """The server's users and the tokens that log them in."""

    def __init__(self, ids: ObjectIdFactory) -> None:
        self._ids = ids
        self._users: dict[str, dict] = {}
        self._tokens: dict[str, str] = {}  # token -> user id

    def add(self, login: str, token: str | None = None) -> tuple[dict, str]:
        """A new user and a token for them."""
        if any(user["login"] == login for user in self._users.values()):
            raise ValueError(f"the login {login!r} is taken")
        user = {
            "_id": self._ids.new(), "login": login, "email": f"{login}@example.com",
            "firstName": login.title(), "lastName": "User", "admin": False, "groups": [], "groupInvites": [],
            "status": "enabled", "emailVerified": False, "otp": False, "public": False, "created": now(),
        }
        self._users[user["_id"]] = user
        token = token if token is not None else secrets.token_hex(24)
        self._tokens[token] = user["_id"]
        return user, token

    def by_token(self, token: str) -> dict | None:
        for known, user_id in self._tokens.items():
            if secrets.compare_digest(known.encode("utf-8"), token.encode("utf-8")):
                return self._users[user_id]
        return None

    def by_login(self, login: str) -> dict:
        for user in self._users.values():
            if user["login"] == login:
                return user
        raise KeyError(f"no user {login!r}")

    @staticmethod
    def me(user: dict) -> dict[str, Any] | None:
        """GET user/me (null for the anonymous user)."""
        if user["_id"] is None:
            return None
        return {**user, "_accessLevel": ADMIN, "_modelType": "user"}
