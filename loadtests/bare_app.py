"""The HTTP ceiling for the benchmark: a bare starlette handler that parses the
JSON body (stdlib json, as a typical handler does) and returns a constant.

    taskset -c 0 uvicorn loadtests.bare_app:app --port 9000 --no-access-log
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = b'{"model_name":"bare","outputs":[]}'


async def infer(request: Request) -> Response:
    json.loads(await request.body())
    return Response(ANSWER, media_type="application/json")


app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
