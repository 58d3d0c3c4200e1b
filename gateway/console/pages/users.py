"""Accounts: an admin lists them, adds one (name, role, first password) and removes one; the
same as ``reverbere user add|list|remove`` (gateway.console.accounts)."""

from typing import Any

from aiohttp import web

from gateway.console import accounts
from gateway.console.web import N_, USER, Action, Page

DONE = {
    "added": N_("Account %(name)s added."),
    "removed": N_("Account %(name)s removed: its sessions have ended."),
}
SELF = N_("You cannot remove your own account.")


async def users_page(request: web.Request, console: Any) -> dict[str, Any]:
    done = request.query.get("done", "")
    return {
        "users": await console.store.run(accounts.list_users),
        "roles": accounts.ROLES,
        "done": DONE.get(done, ""),
        "done_name": request.query.get("name", ""),
        "error": "",
    }


async def add_user(request: web.Request, console: Any, form: dict[str, str]) -> Any:
    name, role, password = (
        form.get("name", "").strip(),
        form.get("role", ""),
        form.get("password", ""),
    )
    try:
        await console.store.run(accounts.add_user, name, role, password)
    except accounts.AccountError as e:
        context = await users_page(request, console)
        context["error"] = str(e)  # the library's sentence (English), as the CLI prints it
        return console.render(request, "users.html", {"page": PAGES[0], **context}, 400)
    return f"/users?done=added&name={name}"


async def remove_user(request: web.Request, console: Any, form: dict[str, str]) -> Any:
    name = request.match_info["name"]
    if name == request[USER]:
        return console.error(request, 400, SELF)
    try:
        await console.store.run(accounts.remove_user, name)
    except accounts.UserNotFound:
        raise web.HTTPNotFound() from None
    return f"/users?done=removed&name={name}"


PAGES = [Page("/users", "users", "users.html", users_page, N_("Accounts"), role="admin")]
ACTIONS = [
    Action("/users/add", "user-add", add_user, role="admin"),
    Action("/users/{name}/remove", "user-remove", remove_user, role="admin"),
]
