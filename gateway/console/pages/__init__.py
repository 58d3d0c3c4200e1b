"""The console's pages, one module each: a module has ``PAGES`` (``gateway.console.web.Page``)
and ``ACTIONS`` (``gateway.console.web.Action``); listed here in the navigation's order."""

from gateway.console.pages import energy, events, fleet, gateway, node, users

MODULES = (fleet, node, events, energy, gateway, users)
