"""Run the simulated platform: migrate its SQLite database, then serve it on loopback.

``python -m sim.platform.server --db FILE [--port N]`` prints the service root
(``http://127.0.0.1:PORT/v1.1``) on its first line once it accepts connections, then serves
until killed. It runs in its own process because Django's settings are process-global.
"""

import argparse
import gzip
import io
import os
import sys
import zlib


def gunzip_requests(app):
    """WSGI middleware: accept request bodies sent with ``Content-Encoding: gzip``.

    The HydroServer app reads plain bodies only; in a real deployment the reverse proxy in
    front of the platform (nginx, Apache ``SetInputFilter DEFLATE``) plays this part.
    """

    def wrapped(environ, start_response):
        encoding = environ.get("HTTP_CONTENT_ENCODING", "").lower()
        if encoding in ("gzip", "deflate"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length)
            try:
                body = gzip.decompress(raw) if encoding == "gzip" else zlib.decompress(raw)
            except (OSError, zlib.error, EOFError):
                start_response("400 Bad Request", [("Content-Type", "text/plain")])
                return [b"bad compressed body"]
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            del environ["HTTP_CONTENT_ENCODING"]
        return app(environ, start_response)

    return wrapped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True, help="SQLite file of the platform")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--exit-with-stdin", action="store_true", help="exit when stdin closes (parent gone)"
    )
    args = parser.parse_args(argv)
    if args.exit_with_stdin:
        import threading

        def watch() -> None:
            sys.stdin.buffer.read()
            os._exit(0)

        threading.Thread(target=watch, daemon=True).start()

    import waitress.server

    os.environ["REVERBERE_PLATFORM_DB"] = args.db
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sim.platform.settings")
    # Bind first, so the self links can carry the real port.
    holder = {}

    def app(environ, start_response):
        return holder["app"](environ, start_response)

    server = waitress.server.create_server(
        app, host=args.host, port=args.port, threads=args.threads, ident="reverbere-platform"
    )
    root = f"http://{args.host}:{int(server.effective_port)}"
    os.environ.setdefault("REVERBERE_PLATFORM_URL", root)

    import django
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    holder["app"] = gunzip_requests(get_wsgi_application())
    sys.stdout.write(root + "/v1.1\n")
    sys.stdout.flush()
    server.run()


if __name__ == "__main__":
    main()
