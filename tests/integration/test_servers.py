"""The listening sockets of the demo and of tests/support/servers.py give every connection TCP_NODELAY.

asyncio sets TCP_NODELAY only on connections of a listening socket made with ``IPPROTO_TCP``;
without it a keep-alive request waits for the client's delayed ACK. Checked on the server's side
of real connections, where the option lives.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel.demo.server import bind
from exitstack_otel.demo.server import running_server as demo_server
from tests.support.servers import running_server


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


APP = Starlette(routes=[Route("/", hello)])


def nodelay_of_connections(server: uvicorn.Server) -> list[int]:
    sockets = [
        connection.transport.get_extra_info("socket") for connection in server.server_state.connections
    ]
    return [sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for sock in sockets]


def test_bind_makes_a_tcp_socket() -> None:
    with bind("127.0.0.1", 0) as sock:
        assert (sock.family, sock.type, sock.proto) == (
            socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,
        )


def test_the_test_servers_connections_have_tcp_nodelay() -> None:
    with running_server(APP) as server, httpx.Client(base_url=server.url()) as client:
        for _ in range(3):  # one kept-alive connection
            assert client.get("/").text == "hello"
        assert nodelay_of_connections(server.server) == [1]


def test_the_demo_servers_connections_have_tcp_nodelay() -> None:
    async def main() -> list[int]:
        with bind("127.0.0.1", 0) as sock:
            async with demo_server(APP, sock) as running, httpx.AsyncClient(base_url=running.url) as client:
                assert (await client.get("/")).text == "hello"
                return nodelay_of_connections(running._server)

    assert asyncio.run(main()) == [1]
