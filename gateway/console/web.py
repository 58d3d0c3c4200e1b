"""What a console page is: a handler, a template, the role it needs (``Page``); and what a
form posts to (``Action``). ``gateway/console/pages/`` holds one module per page, each with
``PAGES`` and ``ACTIONS``; ``pages/__init__.py`` lists the modules. docs/console.md says how
to add one."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.console.i18n import N_

__all__ = ["CSRF", "FORM", "LANG", "N_", "ROLE", "USER", "Action", "Page"]

# What the guard learns of a request, for the handlers and templates.
LANG = web.RequestKey("lang", str)
USER = web.RequestKey("user", str)  # the account's (or the API token's) name
ROLE = web.RequestKey("role", str)
CSRF = web.RequestKey("csrf", str)  # the session's token, for the forms of the page
FORM = web.RequestKey("form", dict)  # a POST's fields, read (and checked) by the guard

if TYPE_CHECKING:
    from gateway.console.app import Console


PageHandler = Callable[[web.Request, "Console"], Awaitable[dict[str, Any]]]
# An action returns the console path to send the browser to (redirect after POST), or a
# response of its own (a page shown once, such as a new node's key).
ActionHandler = Callable[
    [web.Request, "Console", dict[str, str]], Awaitable[str | web.StreamResponse]
]


@dataclass(frozen=True)
class Page:
    """A page: ``handler(request, console)`` returns the template's variables (an
    ``aiohttp.web.HTTPException`` such as ``HTTPNotFound`` may be raised instead)."""

    path: str  # aiohttp route, e.g. "/events" or "/nodes/{node}"
    name: str  # the route's name, and the navigation's key
    template: str  # in gateway/console/templates/
    handler: PageHandler
    title: str  # msgid (N_) of the navigation's label; "" keeps it out of the navigation
    role: str = "viewer"  # the least role that sees it
    api: Callable[[web.Request, "Console"], Awaitable[Any]] | None = None  # GET /api/<name>


@dataclass(frozen=True)
class Action:
    """A form's target: ``handler(request, console, form)`` does it and returns where to
    send the browser next (a path of the console), or a response (``console.render(...)``)
    that must not be reloadable. CSRF and the role are checked before."""

    path: str
    name: str
    handler: ActionHandler
    role: str = "technician"
