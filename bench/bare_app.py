"""The baseline for bench/serve.py: a Flask app with one route that answers with fixed bytes.

bench/serve.py fetches a cached feed from the real app, writes its body to a file and its
headers to JSON, and serves this app under the same gunicorn settings. The route does what any
Flask view must (routing, a Response object, WSGI) and nothing else: no Redis, no encoding, no
conditional-request handling. The real app's cached feed is judged against it.

    BARE_BODY=body.bin BARE_HEADERS='{"Content-Type": "..."}' \
        gunicorn --pythonpath bench 'bare_app:create_app()'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask, Response

DEFAULT_PATH = "/categories/bench.atom"


def create_app() -> Flask:
    body = Path(os.environ["BARE_BODY"]).read_bytes()
    headers: dict[str, str] = json.loads(os.environ["BARE_HEADERS"])
    path = os.environ.get("BARE_PATH", DEFAULT_PATH)
    app = Flask(__name__)

    def feed() -> Response:
        return Response(body, headers=headers)

    app.add_url_rule(path, "feed", feed)
    return app
