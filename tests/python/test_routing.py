"""Routing by method and path, path parameters, 404 and 405."""

import asyncio

import pytest

from conftest import RawClient, request
from pymongoose_uring import App, Response


@pytest.fixture
def app():
    app = App()

    @app.get("/")
    def index(req):
        return "index"

    @app.route("/items", methods=["GET", "POST"])
    def items(req):
        return "items " + req.method

    @app.get("/users/{name}")
    def user(req):
        return {"name": req.params["name"]}

    @app.get("/users/{uid:int}/posts/{pid:int}")
    def post(req):
        return {"uid": req.params["uid"], "pid": req.params["pid"]}

    @app.get("/files/{rest:path}")
    def files(req):
        return {"rest": req.params["rest"]}

    @app.delete("/users/{name}")
    def delete_user(req):
        return 204

    @app.put("/items")
    async def put_item(req):
        await asyncio.sleep(0)
        return "put " + req.body.decode()

    return app


@pytest.mark.parametrize(
    "method,path,status,body",
    [
        ("GET", "/", 200, b"index"),
        ("GET", "/items", 200, b"items GET"),
        ("POST", "/items", 200, b"items POST"),
        ("PUT", "/items", 200, b"put x"),
        ("GET", "/users/ann", 200, b'{"name":"ann"}'),
        ("GET", "/users/J%C3%BCrgen", 200, b'{"name":"J\\u00fcrgen"}'),
        ("GET", "/users/7/posts/42", 200, b'{"uid":7,"pid":42}'),
        ("GET", "/files/a/b/c.txt", 200, b'{"rest":"a/b/c.txt"}'),
        ("DELETE", "/users/ann", 204, b""),
        ("GET", "/nowhere", 404, b"Not Found"),
        ("GET", "/users/", 404, b"Not Found"),
        ("GET", "/users/x/posts/1", 404, b"Not Found"),
    ],
)
def test_routes(serve, app, method, path, status, body):
    server = serve(app)
    got = request(server, method, path, body=b"x" if method in ("POST", "PUT") else None)
    assert (got[0], got[2]) == (status, body)


def test_405_lists_allowed_methods(serve, app):
    server = serve(app)
    status, headers, body, _ = request(server, "DELETE", "/items")
    assert status == 405 and body == b"Method Not Allowed"
    assert headers["allow"] == "GET, HEAD, POST, PUT"
    status, headers, _, _ = request(server, "POST", "/users/ann")
    assert status == 405 and headers["allow"] == "DELETE, GET, HEAD"


def test_head_uses_get_route(serve, app):
    server = serve(app)
    c = RawClient(server.port)
    for path in (b"/", b"/users/ann"):
        c.send(b"HEAD " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = c.read_response(head=True)
        assert status == 200 and body == b"" and int(dict(headers)["Content-Length"]) > 0
    c.close()


def test_routes_added_while_running(serve, app):
    server = serve(app)
    assert request(server, path="/late")[0] == 404
    app.add_route("/late", lambda req: "late", ["GET"])
    assert request(server, path="/late")[2] == b"late"


def test_custom_not_found(serve, app):
    app.not_found = lambda req: Response.text("nothing at " + req.path, 404)
    assert request(serve(app), path="/x")[2] == b"nothing at /x"


def test_app_is_a_plain_callable(serve, app):
    # Wrapped in a lambda, the App is dispatched entirely in Python.
    server = serve(lambda req: app(req))
    assert request(server, path="/users/7/posts/1")[2] == b'{"uid":7,"pid":1}'
    assert request(server, "DELETE", "/items")[0] == 405


@pytest.mark.no_uring_ok
def test_route_errors():
    app = App()
    with pytest.raises(ValueError):
        app.add_route("no-slash", lambda r: None)
    with pytest.raises(ValueError):
        app.add_route("/x/{a:float}", lambda r: None)
    with pytest.raises(ValueError):
        app.add_route("/x/{a}/{a}", lambda r: None)
    with pytest.raises(TypeError):
        app.add_route("/x", "not callable")
