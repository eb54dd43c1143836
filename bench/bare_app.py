"""The framework ceiling: a Starlette app that reads the body and answers 202."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hook(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"accepted": True}, 202)


app = Starlette(routes=[Route("/hooks/{source}", hook, methods=["POST"])])
