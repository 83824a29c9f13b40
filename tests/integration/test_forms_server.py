"""Leak tests: hundreds of uploads, good, bad and aborted, against a real uvicorn in a subprocess.

The server's descriptors and temporary files are counted from outside through /proc, with its
temporary directory pointed at a private one; its spool size is 1 KiB, so every file over that is
on disk and holds a descriptor while it is open.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.leaks import Usage, settle, usage
from tests.support.upload_app import (
    BAD_UPLOADS,
    BOUNDARY,
    GOOD_UPLOADS,
    MULTIPART,
    TEST_LIMITS,
    Upload,
    UploadServer,
    file_part,
    run_upload_server,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts descriptors through /proc"),
]

ROUNDS = 20  # x 15 uploads = 300 requests
CLIENTS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UploadServer]:
    tempdir = tmp_path_factory.mktemp("upload-server-tmp")
    log = tmp_path_factory.mktemp("upload-server-log") / "server.log"
    with run_upload_server(tempdir, TEST_LIMITS, log=log) as running:
        yield running


@pytest.fixture(autouse=True)
def no_server_errors(server: UploadServer) -> Iterator[None]:
    start = len(server.output())
    yield
    assert server.errors(since=start) == [], server.output()[start:]


def quiet_usage(server: UploadServer) -> Usage:
    """The server's usage once every connection is gone and every cleanup has run."""
    return settle(lambda: usage(server.tempdir, server.pid), lambda now: not now.temp_files)


def back_to(server: UploadServer, baseline: Usage) -> Usage:
    return settle(
        lambda: usage(server.tempdir, server.pid),
        lambda now: not now.temp_files and now.fd_count <= baseline.fd_count,
    )


def assert_nothing_leaked(now: Usage, baseline: Usage) -> None:
    assert now.temp_files == []
    extra = {fd: target for fd, target in now.fds.items() if baseline.fds.get(fd) != target}
    assert now.fd_count <= baseline.fd_count, f"descriptors left open: {extra}"


def closed_ok(server: UploadServer) -> int:
    return int(httpx.get(server.url + "/closed-forms").json().get("ok", 0))


def post_all(server: UploadServer, uploads: list[Upload]) -> list[tuple[Upload, int]]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return [
            (
                upload,
                client.post(
                    "/upload", content=upload.body, headers={"content-type": upload.content_type}
                ).status_code,
            )
            for upload in uploads
        ]


def test_hundreds_of_good_and_bad_uploads_leave_nothing_open(server: UploadServer) -> None:
    baseline = quiet_usage(server)
    closed_before = closed_ok(server)
    mix = list(GOOD_UPLOADS + BAD_UPLOADS) * ROUNDS
    batches = [mix[i::CLIENTS] for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        answered = [
            pair for batch in pool.map(lambda batch: post_all(server, batch), batches) for pair in batch
        ]

    wrong = [(upload.name, status) for upload, status in answered if status != upload.status]
    assert wrong == []
    assert len(answered) == len(mix)
    assert_nothing_leaked(back_to(server, baseline), baseline)
    # only forms that were read in full are pushed; each of them was closed by the stack
    assert closed_ok(server) - closed_before == len(GOOD_UPLOADS) * ROUNDS


def request_head(content_length: int) -> bytes:
    return (
        f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MULTIPART}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def connect(server: UploadServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def receive_more(sock: socket.socket) -> bytes:
    chunk = sock.recv(4096)
    if not chunk:
        raise AssertionError("the server closed the connection without a complete answer")
    return chunk


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    received = b""
    while b"\r\n\r\n" not in received:
        received += receive_more(sock)
    head, body = received.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        body += receive_more(sock)
    return int(lines[0].split()[1]), body


def abort(sock: socket.socket, reset: bool) -> None:
    if reset:  # RST instead of FIN: the server's next read fails instead of seeing an EOF
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


PART = file_part("f", "aborted.bin", b"a" * (16 * 1024))[:-2]


def test_clients_leaving_mid_upload_leave_nothing_open(server: UploadServer) -> None:
    baseline = quiet_usage(server)
    for i in range(20):
        sock = connect(server)
        sock.sendall(request_head(200 * 1024) + PART)
        # the spooled file is on disk and open before the client goes: what must not leak
        during = settle(lambda: usage(server.tempdir, server.pid), lambda now: bool(now.temp_files))
        assert during.temp_files != []
        abort(sock, reset=i % 2 == 0)
        assert (
            settle(lambda: usage(server.tempdir, server.pid), lambda now: not now.temp_files).temp_files == []
        )
    assert_nothing_leaked(back_to(server, baseline), baseline)


def test_a_burst_of_aborted_and_truncated_uploads_leaves_nothing_open(server: UploadServer) -> None:
    baseline = quiet_usage(server)
    # cut at every stage: in the request head, in a part's headers, in its data, after all of it
    head = request_head(200 * 1024)
    cuts = [len(head) // 2, len(head) + 40, len(head) + 90, len(head) + 2000, len(head) + len(PART)]
    sockets = []
    for i in range(200):
        sock = connect(server)
        sock.sendall((head + PART)[: cuts[i % len(cuts)]])
        sockets.append(sock)
        if len(sockets) == 20:  # keep a few connections in flight at once
            for open_sock in sockets:
                abort(open_sock, reset=i % 3 == 0)
            sockets.clear()
    for sock in sockets:
        abort(sock, reset=False)
    assert_nothing_leaked(back_to(server, baseline), baseline)


def test_a_body_cut_short_of_its_closing_boundary_is_a_400_over_the_wire(server: UploadServer) -> None:
    baseline = quiet_usage(server)
    body = file_part("f", "cut.bin", b"c" * 8192)  # no closing "--boundary--"
    assert BOUNDARY.encode() + b"--" not in body
    with connect(server) as sock:
        sock.sendall(request_head(len(body)) + body)
        status, detail = read_response(sock)
    assert (status, detail) == (400, b"Multipart body ended before its closing boundary.")
    assert_nothing_leaked(back_to(server, baseline), baseline)
