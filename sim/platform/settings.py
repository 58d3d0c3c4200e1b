"""Django settings of the simulated municipal platform: a SensorThings API v1.1 server
(PyPI ``django-ogc-sensorthings``, the HydroServer implementation) on one SQLite file.

Read from the environment by ``sim.platform.server`` before Django starts:
``REVERBERE_PLATFORM_DB`` (SQLite path), ``REVERBERE_PLATFORM_URL`` (the public root used in
self links), ``REVERBERE_PLATFORM_TOKEN`` (bearer token required when set) and
``REVERBERE_PLATFORM_BASIC`` ("user:password" accepted as basic auth when set).
"""

import os
from uuid import UUID

SECRET_KEY = "reverbere-simulated-platform-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "sim.platform.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "sensorthings.versions.v1_1",
    "sensorthings.versions.v1_1.backends.django",
    "sensorthings.versions.v1_1.extensions.dataarray",
]

MIDDLEWARE = [
    # Compressed responses for clients that accept them (the gateway pays for every byte).
    "django.middleware.gzip.GZipMiddleware",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("REVERBERE_PLATFORM_DB", "platform.sqlite3"),
        "OPTIONS": {"timeout": 30},
    }
}

SENSORTHINGS_V1_1_SERVICE_URL = os.environ.get("REVERBERE_PLATFORM_URL", "http://127.0.0.1")
SENSORTHINGS_V1_1_BACKEND_ADAPTER = (
    "sensorthings.versions.v1_1.backends.django.adapter.DjangoBackendAdapter"
)
SENSORTHINGS_V1_1_ID_TYPE = UUID
SENSORTHINGS_V1_1_ID_DELIMITER = "'"
SENSORTHINGS_V1_1_DOCS_ENABLED = False
SENSORTHINGS_V1_1_MAX_TOP = 1000

if os.environ.get("REVERBERE_PLATFORM_TOKEN") or os.environ.get("REVERBERE_PLATFORM_BASIC"):
    SENSORTHINGS_V1_1_DEFAULT_AUTH_HANDLER = [
        "sim.platform.auth.BearerAuth",
        "sim.platform.auth.BasicAuth",
    ]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "root": {"handlers": ["null"], "level": "ERROR"},
}
