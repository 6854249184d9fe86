"""No single request stops the service: each probe of the "Safe to expose" review against a
real ``lrtune serve`` (and ``lrtune dashboard``) on loopback does bounded work.

Deadlines here are generous (tens of seconds against work measured in milliseconds to a few
seconds): they tell "bounded" from "minutes or forever", they are not timing targets.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, lrtune_env, spawn, stop, wait_ready

pytestmark = pytest.mark.timeout(240)

TOKEN = "security-token"
LIMIT = 64 * 1024  # LRTUNE_MAX_BODY_BYTES's default
CURVE_CAP = 50_000
HEADER_TIMEOUT = 1.0
PROBE_BYTES = 64 * 2**20  # what an unlimited server would take in per chunked probe
RSS_GROWTH_MB = 100  # an unlimited server grows by about the probe's size (64 MiB) or more
ENV = {"LRTUNE_API_TOKENS": TOKEN, "LRTUNE_MAX_CURVE_STEPS": str(CURVE_CAP),
       "LRTUNE_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "LRTUNE_KEEP_ALIVE_TIMEOUT": "1",
       "LRTUNE_SHUTDOWN_TIMEOUT": "2"}


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextmanager
def server(db_url: str, tmp_path: Path, command: str = "serve") -> Iterator[tuple[str, int]]:
    """``lrtune serve`` (or ``dashboard``) on a free loopback port: its URL and pid."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / f"{command}.log"
    proc = spawn([command, "--port", str(port)], lrtune_env(db_url, **ENV), log)
    try:
        if command == "serve":
            wait_ready(url, proc)
        else:
            wait_answering(f"{url}/api/studies", proc)
        yield url, proc.pid
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        stop(proc)
        print(log.read_text()[-3000:])


def wait_answering(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not answering in {timeout}s")


class HealthWatch:
    """Asks /healthz every 0.2 s from a thread; every answer must be 200 within 60 s."""

    def __init__(self, url: str) -> None:
        self.url, self.slowest = url, 0.0
        self.codes: list[int | str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self) -> None:
        with httpx.Client(timeout=60) as client:
            while True:  # asks at once, so at least once while the probes run
                started = time.monotonic()
                try:
                    self.codes.append(client.get(f"{self.url}/healthz").status_code)
                except httpx.HTTPError as e:
                    self.codes.append(repr(e))
                self.slowest = max(self.slowest, time.monotonic() - started)
                if self.done.wait(0.2):
                    return

    def __enter__(self) -> HealthWatch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join(timeout=90)
        print(f"/healthz: {len(self.codes)} answers, slowest {self.slowest:.2f} s")
        assert self.codes and set(self.codes) == {200}, self.codes


def chunked_probe(url: str, path: str) -> tuple[int, bytes]:
    """POST up to PROBE_BYTES as a chunked body on a raw socket; the bytes the server took
    before it answered or closed, and what it answered."""
    host, port = url.removeprefix("http://").split(":")
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}"
                     "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     .encode())
        try:
            while sent < PROBE_BYTES:
                sock.sendall(chunk)
                sent += 65536
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # closed on us: what the limit is for
        try:
            answer = sock.recv(4096)
        except OSError:
            answer = b""
    return sent, answer


def test_curve_and_chunked_probes_do_bounded_work(db_url: str, tmp_path: Path) -> None:
    with server(db_url, tmp_path) as (url, pid), HealthWatch(url):
        probe = httpx.get(f"{url}/schedules/cosine_restarts/curve", timeout=60, params={
            "epochs": 1000, "steps_per_epoch": 100, "T_0": 0.000001})
        assert probe.status_code == 422 and probe.json()["error"]["field"] == "epochs"
        started = time.monotonic()
        allowed = httpx.get(f"{url}/schedules/cosine_restarts/curve", timeout=60, params={
            "epochs": 500, "steps_per_epoch": 100, "T_0": 0.000001})
        print(f"{CURVE_CAP}-step curve with 1-step periods: {time.monotonic() - started:.2f} s")
        assert allowed.status_code == 200 and len(allowed.json()["lr"]) == CURVE_CAP

        before = rss_mb(pid)
        for path in ("/studies", "/api/studies"):  # an lrtune route and a dashboard route
            sent, answer = chunked_probe(url, path)
            print(f"chunked {path}: server took {sent / 2**20:.1f} MiB of "
                  f"{PROBE_BYTES / 2**20:.0f}, RSS {rss_mb(pid):.0f} MiB (before {before:.0f})")
            assert sent < PROBE_BYTES, "the whole body was read"
            # 413 once over the limit; the dashboard refuses a write before reading its body
            refusals = (b"HTTP/1.1 413", b"HTTP/1.1 403") if path.startswith("/api/") else \
                (b"HTTP/1.1 413",)
            assert answer == b"" or answer.startswith(refusals), answer[:200]
        assert rss_mb(pid) - before < RSS_GROWTH_MB

        # within the limit: a dashboard write is refused (read-only) and a read carrying a
        # chunked body is answered, bottle never parsing the body's framing
        body = b'{"study_name": "chunked", "directions": ["minimize"]}' + b" " * (LIMIT - 100)
        r = httpx.post(f"{url}/api/studies", content=iter([body[:1000], body[1000:]]),
                       headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 403 and r.json()["error"]["code"] == "read_only", r.text
        r = httpx.request("GET", f"{url}/api/studies", content=iter([body[:1000], body[1000:]]),
                          timeout=60)
        assert r.status_code == 200, r.text


def slow_client(url: str) -> socket.socket:
    """A connection that has sent part of a request head."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    return sock


def closed_after(sock: socket.socket, drip: bool, started: float, deadline: float = 60
                 ) -> float:
    """Seconds from ``started`` until the server closes ``sock``, sending a header byte every
    0.2 s if ``drip``; fails past ``deadline``."""
    sock.settimeout(0.2)
    with sock:
        while time.monotonic() - started < deadline:
            try:
                if drip:
                    sock.sendall(b"X")
                if sock.recv(1024) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - started
    raise AssertionError(f"connection still open after {deadline} s")


@pytest.mark.parametrize("command", ["serve", "dashboard"])
def test_slow_request_heads_are_closed(db_url: str, tmp_path: Path, command: str) -> None:
    with server(db_url, tmp_path, command) as (url, _):
        opened = time.monotonic()
        drip = slow_client(url)
        silent = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        held = [slow_client(url) for _ in range(50)]
        # the server answers others while 52 heads are pending (wsgiref's one thread did not)
        probe = "/healthz" if command == "serve" else "/api/studies"
        assert httpx.get(f"{url}{probe}", timeout=30).status_code == 200
        seconds = closed_after(drip, True, opened)
        print(f"{command}: a head dripped byte by byte closed after {seconds:.2f} s "
              f"(header timeout {HEADER_TIMEOUT} s)")
        assert seconds >= HEADER_TIMEOUT * 0.9
        for sock in [silent, *held]:
            closed_after(sock, False, opened)


def test_standalone_dashboard_limits_chunked_bodies(db_url: str, tmp_path: Path) -> None:
    with server(db_url, tmp_path, "dashboard") as (url, pid):
        before = rss_mb(pid)
        sent, answer = chunked_probe(url, "/api/studies")
        print(f"dashboard chunked: server took {sent / 2**20:.1f} MiB, RSS {rss_mb(pid):.0f} "
              f"MiB (before {before:.0f})")
        assert sent < PROBE_BYTES
        refusals = (b"HTTP/1.1 413", b"HTTP/1.1 403")  # over the limit, or a refused write
        assert answer == b"" or answer.startswith(refusals), answer[:200]
        assert rss_mb(pid) - before < RSS_GROWTH_MB
        assert httpx.get(f"{url}/api/studies", timeout=30).status_code == 200


def test_sigterm_under_load_ends_the_server(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    proc = spawn(["serve", "--port", str(port)], lrtune_env(db_url, **ENV), log)
    done = threading.Event()
    answered: list[int] = []

    def load() -> None:  # the costliest capped curve, over and over
        with httpx.Client(timeout=60) as client:
            while not done.is_set():
                try:
                    answered.append(client.get(f"{url}/schedules/random/curve", params={
                        "epochs": 500, "steps_per_epoch": 100}).status_code)
                except httpx.HTTPError:
                    pass

    threads = [threading.Thread(target=load, daemon=True) for _ in range(24)]
    try:
        wait_ready(url, proc)
        for t in threads:
            t.start()
        end = time.monotonic() + 60
        while not answered and time.monotonic() < end:
            time.sleep(0.2)
        assert answered, "no curve answered under load"
        waits = []
        for _ in range(3):
            started = time.monotonic()
            assert httpx.get(f"{url}/healthz", timeout=60).status_code == 200
            waits.append(time.monotonic() - started)
        print("/healthz under load: " + ", ".join(f"{w:.2f} s" for w in waits))
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
        print(f"SIGTERM with 24 clients busy: exited {code} after "
              f"{time.monotonic() - sent:.2f} s ({len(answered)} curves answered)")
        assert code == 0
    finally:
        done.set()
        stop(proc)
        for t in threads:
            t.join(timeout=90)
        print(log.read_text()[-3000:])
