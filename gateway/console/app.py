"""The console: French web pages on the gateway's HTTP address, in the gateway's process.

``Console(settings).install(app)`` adds to the gateway's ``aiohttp.web.Application`` (the
``app`` of ``gateway.metrics.HttpServer``) the login, the pages of ``gateway/console/pages/``,
their forms, ``/api/<page>`` for scripts, ``/health`` and the static files; one middleware
(``_guard``) decides for every request, before any handler runs:

* nothing is readable without a session (a cookie from ``/login``), except ``/login``,
  ``/health``, ``/static/`` and ``/metrics`` while ``[http] metrics_public`` is on; ``/api/``
  also takes ``Authorization: Bearer <token>`` (``reverbere token add``) and answers 401
  without one;
* every POST carries its session's CSRF token (the login form, a token of its own cookie);
* a page or a form needs its role (``gateway.console.accounts.ROLES``), else 403.

Sessions end ``[http] session_minutes`` after login; login attempts are slowed and capped per
address (``gateway.console.throttle``); argon2 runs in the console's database thread, like
every read (``gateway.console.store``), so the event loop, and the nodes' acks, never wait.
"""

import hmac
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from gateway.console import accounts
from gateway.console.i18n import CATALOGUES, Formatter, choose
from gateway.console.pages import MODULES
from gateway.console.store import ConsoleStore
from gateway.console.throttle import LoginThrottle
from gateway.console.views import EnergyBoard
from gateway.console.web import CSRF, FORM, LANG, N_, ROLE, USER, Action, Page
from gateway.pipeline.detect import DetectConfig

HERE = Path(__file__).parent
SESSION_COOKIE = "reverbere_session"
LOGIN_COOKIE = "reverbere_login"  # the login form's CSRF token (no session yet)
PUBLIC = ("/login", "/health")

WRONG_PASSWORD = N_("Wrong name or password.")
TOO_MANY = N_("Too many attempts from this address: try again in %(seconds)s s.")
SESSION_ENDED = N_("Your session has ended: please log in again.")
FORM_EXPIRED = N_("This form has expired: reload the page and try again.")
FORBIDDEN = N_("Your role does not allow this.")
NOT_FOUND = N_("There is nothing at this address.")

Clock = Callable[[], float]


@dataclass
class ConsoleSettings:
    """What the console needs from the gateway (``gateway.service`` fills it in)."""

    database: Path
    detect: DetectConfig  # the town's zone, lamps, buildings, when a node is silent
    node_config: Callable[[str], dict[str, Any]]  # a node's interval and pack
    heard: Callable[[], dict[str, Any]] = dict  # ingest's NodeCache.heard
    metrics_public: bool = True
    session_lifetime: float = 8 * 3600.0
    behind_tls: bool = False  # a TLS proxy in front: cookies get Secure
    clock: Clock = field(default=time.time)
    # For the Gateway page (cheap: counters and in-memory state).
    clock_state: Callable[[], dict[str, Any]] | None = None  # Gateway.clock_state
    sync_status: Callable[[Any], dict[str, Any]] | None = None  # (db) -> sync_status(db, cfg)
    retention_days: float = 30.0
    started: float = field(default_factory=time.time)  # the gateway's start, for its uptime


class Console:
    def __init__(self, settings: ConsoleSettings):
        self.settings = settings
        self.store = ConsoleStore(settings.database)
        # the Energy page's figures, from the per-day sums the database keeps (console.daily)
        self.energy = EnergyBoard(settings.database, settings.detect, self.now)
        # the month's report to download, seconds for a whole town: in a thread of its own,
        # so that the other pages do not queue behind one being built
        self.downloads = ConsoleStore(settings.database)
        self.throttle = LoginThrottle(self.now)
        self.tz = ZoneInfo(settings.detect.timezone)
        self.pages: list[Page] = [p for m in MODULES for p in m.PAGES]
        self.actions: list[Action] = [a for m in MODULES for a in m.ACTIONS]
        self._envs = {lang: self._env(lang) for lang in CATALOGUES}

    def now(self) -> float:
        return self.settings.clock()

    def _env(self, lang: str) -> jinja2.Environment:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            extensions=["jinja2.ext.i18n"],
            undefined=jinja2.StrictUndefined,
        )
        env.install_gettext_translations(CATALOGUES[lang], newstyle=True)
        return env

    def install(self, app: web.Application) -> None:
        """Add the console's routes and its guard to ``app`` (before it starts)."""
        app.middlewares.append(self._guard)
        r = app.router
        r.add_get("/login", self._login_form)
        r.add_post("/login", self._login)
        r.add_post("/logout", self._logout)
        r.add_get("/health", self._health)
        r.add_static("/static/", HERE / "static", name="static", append_version=True)
        for page in self.pages:
            r.add_get(page.path, self._page_handler(page), name=page.name)
            if page.api is not None:
                r.add_get(f"/api/{page.name}", self._api_handler(page))
        for action in self.actions:
            r.add_post(action.path, self._action_handler(action), name=action.name)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._close)

    async def _start(self, app: web.Application) -> None:
        self.energy.start()

    async def _close(self, app: web.Application) -> None:
        await self.energy.close()
        await self.downloads.close()
        await self.store.close()

    # --- the guard -------------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request[LANG] = choose(request.headers.get("Accept-Language"))
        path = request.path
        if path in PUBLIC or path.startswith("/static/"):
            return _harden(await handler(request))
        if path == "/metrics" and self.settings.metrics_public:
            return await handler(request)
        bearer = _bearer(request)
        if bearer is not None and (path.startswith("/api/") or path == "/metrics"):
            who = await self.store.run(accounts.token_role, bearer, self.now())
            if who is None:
                return _unauthorized()
            request[USER], request[ROLE], request[CSRF] = who[0], who[1], ""
            return await handler(request)
        cookie = request.cookies.get(SESSION_COOKIE)
        sess = None
        if cookie:
            sess = await self.store.run(accounts.session, cookie, self.now())
        if sess is None:
            if path.startswith("/api/") or path == "/metrics":
                return _unauthorized()
            if request.method != "GET":
                raise web.HTTPSeeOther("/login")
            target = "/login" + ("?expired=1" if cookie else "")
            if path != "/":
                target += ("&" if cookie else "?") + "next=" + _quote(request.path_qs)
            response = web.HTTPSeeOther(target)
            if cookie:
                response.del_cookie(SESSION_COOKIE, path="/")
            raise response
        request[USER], request[ROLE], request[CSRF] = sess.user, sess.role, sess.csrf
        if request.method == "POST":
            form = await request.post()
            if not hmac.compare_digest(str(form.get("csrf", "")), sess.csrf):
                return self.error(request, 403, FORM_EXPIRED)
            request[FORM] = {k: str(v) for k, v in form.items()}
        try:
            return _harden(await handler(request))
        except web.HTTPNotFound:
            return self.error(request, 404, NOT_FOUND)

    # --- rendering -------------------------------------------------------------------------

    def render(
        self, request: web.Request, template: str, context: dict[str, Any], status: int = 200
    ) -> web.Response:
        lang = request.get(LANG, "fr")
        role = request.get(ROLE)
        fmt = Formatter(lang, self.tz)
        variables = {
            "lang": lang,
            "user": request.get(USER),
            "role": role,
            "csrf": request.get(CSRF, ""),
            "can": (lambda needed: role is not None and accounts.can(role, needed)),
            "nav": [p for p in self.pages if p.title and role and accounts.can(role, p.role)],
            "path": request.path,
            "fmt": fmt,
            "zone": str(self.tz),
            "static": lambda name: request.app.router["static"].url_for(filename=name),
            **context,
        }
        body = self._envs[lang].get_template(template).render(variables)
        return web.Response(status=status, text=body, content_type="text/html", charset="utf-8")

    def error(self, request: web.Request, status: int, message: str) -> web.Response:
        return _harden(self.render(request, "error.html", {"message": message}, status))

    def _page_handler(self, page: Page) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            if not accounts.can(request[ROLE], page.role):
                return self.error(request, 403, FORBIDDEN)
            context = await page.handler(request, self)
            return self.render(request, page.template, {"page": page, **context})

        return handle

    def _api_handler(self, page: Page) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            if not accounts.can(request[ROLE], page.role):
                return web.json_response({"error": "forbidden"}, status=403)
            return web.json_response(await page.api(request, self))

        return handle

    def _action_handler(self, action: Action) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            if not accounts.can(request[ROLE], action.role):
                return self.error(request, 403, FORBIDDEN)
            done = await action.handler(request, self, request[FORM])
            if isinstance(done, web.StreamResponse):
                return done
            raise web.HTTPSeeOther(done)

        return handle

    # --- login and logout ------------------------------------------------------------------

    def _login_page(
        self, request: web.Request, message: str = "", status: int = 200, nxt: str | None = None
    ) -> web.Response:
        """The login form; ``nxt`` is where to go after it (the page that sent here)."""
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        nxt = request.query.get("next", "") if nxt is None else nxt
        nxt = nxt if _local(nxt) else ""
        if request.query.get("expired") and not message:
            message = SESSION_ENDED
        response = self.render(
            request, "login.html", {"login_csrf": token, "message": message, "next": nxt}, status
        )
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            httponly=True,
            samesite="Strict",
            path="/login",
            secure=self._secure(request),
        )
        return _harden(response)

    async def _login_form(self, request: web.Request) -> web.Response:
        return self._login_page(request)

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        nxt = str(form.get("next", ""))
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(str(form.get("csrf", "")), expected):
            return self._login_page(request, FORM_EXPIRED, 403, nxt)
        address = request.remote or "?"
        wait = self.throttle.wait(address)
        if wait > 0:
            fmt = Formatter(request[LANG], self.tz)
            message = CATALOGUES[request[LANG]].gettext(TOO_MANY) % {"seconds": fmt.number(wait, 0)}
            response = self._login_page(request, message, 429, nxt)
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        user = await self.store.run(accounts.authenticate, name, password)
        if user is None:
            self.throttle.failed(address)
            return self._login_page(request, WRONG_PASSWORD, 401, nxt)
        self.throttle.succeeded(address)
        cookie = await self.store.run(
            accounts.open_session, user.name, self.settings.session_lifetime, self.now()
        )
        response = web.HTTPSeeOther(nxt if _local(nxt) else "/")
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            httponly=True,
            samesite="Lax",
            secure=self._secure(request),
            path="/",
            max_age=int(self.settings.session_lifetime),
        )
        response.del_cookie(LOGIN_COOKIE, path="/login")
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        await self.store.run(accounts.close_session, request.cookies[SESSION_COOKIE])
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    async def _health(self, request: web.Request) -> web.Response:
        response = web.json_response({"status": "ok"})
        response.force_close()
        return response

    def _secure(self, request: web.Request) -> bool:
        return self.settings.behind_tls or request.secure


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _unauthorized() -> web.Response:
    response = web.json_response(
        {"error": "unauthorized: send Authorization: Bearer <token> (reverbere token add)"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="reverbere"'},
    )
    response.force_close()
    return response


def _local(target: str) -> bool:
    """Only a path of this console is a place to go back to after login (no open redirect)."""
    return target.startswith("/") and not target.startswith("//") and "\\" not in target


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="")


# Nothing from elsewhere: no framing, no inline script, no resource from the internet.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def _harden(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.content_type == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
    return response
