"""FastAPI on uvicorn (uvloop + httptools when installed): python uvicorn_server.py PORT

The app is apps.py's fastapi_app, the one granian (granian_server.py fastapi) and the ASGI
adapter (pymongoose_uring_fastapi_server.py) serve too.
"""

import apps
import common

if __name__ == "__main__":
    try:
        import uvicorn
    except ImportError as e:
        common.unavailable("uvicorn", e)
    uvicorn.run(
        apps.fastapi_app,
        host=common.HOST,
        port=common.port_from_argv(8003),
        log_level="warning",
        access_log=False,
    )
