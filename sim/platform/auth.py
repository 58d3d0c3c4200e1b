"""Optional authentication of the simulated platform (bearer token, basic auth)."""

import hmac
import os

from ninja.security import HttpBasicAuth, HttpBearer


class BearerAuth(HttpBearer):
    def authenticate(self, request, token):
        expected = os.environ.get("REVERBERE_PLATFORM_TOKEN", "")
        if expected and hmac.compare_digest(token.encode(), expected.encode()):
            return "token"
        return None


class BasicAuth(HttpBasicAuth):
    def authenticate(self, request, username, password):
        expected = os.environ.get("REVERBERE_PLATFORM_BASIC", "")
        given = f"{username}:{password}"
        if expected and hmac.compare_digest(given.encode(), expected.encode()):
            return username
        return None
