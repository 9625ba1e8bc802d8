"""FastAPI on uvicorn (uvloop + httptools when installed): python uvicorn_server.py PORT"""

import common

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
except ImportError as e:
    common.unavailable("fastapi/uvicorn", e)

app = FastAPI()


@app.get("/")
async def hello():
    # The idiomatic FastAPI answer: a dict, serialized compactly by JSONResponse to the
    # same 27 bytes as every other server.
    return {"message": "Hello, World!"}


@app.get("/16k")
async def bytes_16k():
    return Response(common.BYTES_16K, media_type=common.OCTETS)


@app.get("/1m")
async def bytes_1m():
    return Response(common.BYTES_1M, media_type=common.OCTETS)


@app.post(common.ECHO_PATH)
async def echo(request: Request):
    return Response(await request.body(), media_type=common.OCTETS)


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=common.HOST,
        port=common.port_from_argv(8003),
        log_level="warning",
        access_log=False,
    )
