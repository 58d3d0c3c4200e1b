"""The web console on the gateway's HTTP address (docs/console.md): ``Console`` and its
``ConsoleSettings`` (``gateway.console.app``); accounts and tokens in
``gateway.console.accounts``."""
