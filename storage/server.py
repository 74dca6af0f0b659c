"""`EmbeddedS3`: moto's S3 server on 127.0.0.1, for development, tests and the local swarm.

It is a real HTTP S3 endpoint, so code under test takes the same path as against AWS, R2 or MinIO. Two modes:

- ``"subprocess"`` (default): ``python -m moto.server`` in a child process. Faster under load (its request
  handling does not compete for our GIL) and shareable with other processes. The child exits by itself if its
  parent dies, so a killed test run leaves no stray server.
- ``"thread"``: moto's ``ThreadedMotoServer`` inside this process. Starts a little faster; shares moto's
  in-process state (so do not combine it with ``moto.mock_aws`` in the same process).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from . import _moto_patches
from ._moto_patches import patch_moto  # noqa: F401 - the name tests and users know
from .config import MiB, S3Config, TransferConfig

__all__ = ["EmbeddedS3"]

Mode = Literal["subprocess", "thread"]


# Runs in the child: our patches (the module's source: no import of ours there), moto's own entry point, and a
# watchdog that exits when the parent is gone. argv: parent pid, speedups (0/1), request log (0/1), moto's arguments.
_CHILD = inspect.getsource(_moto_patches) + """
import os, sys, threading, time
patch_moto(speedups=sys.argv[2] == "1", request_log=sys.argv[3] == "1")
parent = int(sys.argv[1])
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(sys.argv[4:])
"""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedS3:
    """moto's S3 server on a free local port; a context manager (``with`` or ``async with``).

    ``env`` adds environment variables for the subprocess (e.g. ``{"INITIAL_NO_AUTH_ACTION_COUNT": "0"}`` makes
    moto check credentials); ``log_file`` receives the server's request log (discarded by default).
    ``speedups=False`` leaves out the patches in `storage._moto_patches` that only make moto faster (the fixes stay
    in); it exists to measure them, and only in mode ``"subprocess"`` (a patch applied to a process stays).
    """

    def __init__(
        self,
        mode: Mode = "subprocess",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        speedups: bool = True,
    ) -> None:
        if mode not in ("subprocess", "thread"):
            raise ValueError(f"mode must be 'subprocess' or 'thread', got {mode!r}")
        if env and mode == "thread":
            raise ValueError("env only applies to mode='subprocess'")
        if not speedups and mode == "thread":
            raise ValueError("speedups=False only applies to mode='subprocess'")
        self.mode = mode
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._env = dict(env or {})
        self._log_file = log_file
        self.speedups = speedups
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread_server = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedS3(mode={self.mode!r}, endpoint_url={self.endpoint_url if self.port else None!r}, {state})"

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise RuntimeError("EmbeddedS3 is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._thread_server is not None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used so far (fields 14 and 15 of /proc/PID/stat): what
        benchmarks charge to the server. Linux and mode ``"subprocess"`` only (in a thread it shares the caller's)."""
        if self._proc is None:
            raise RuntimeError("cpu_seconds needs a running server in mode 'subprocess'")
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def config(self) -> S3Config:
        """An `S3Config` for this server: dummy credentials, path-style addressing."""
        return S3Config(
            endpoint_url=self.endpoint_url,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
            addressing_style="path",
        )

    @staticmethod
    def transfer_config() -> TransferConfig:
        """A `TransferConfig` tuned (by `bench.storage` measurements) for moto rather than for S3 or R2.

        moto copies every part again to complete a multipart upload and (before `storage._moto_patches`, when this
        was measured) copied the whole object to answer each ranged GET, so splitting an object only adds work
        there; one request per object is fastest. Against S3/R2, whose per-connection throughput is capped, keep
        the defaults.
        """
        return TransferConfig(multipart_threshold=5 * 1024 * MiB, ranged_get_threshold=5 * 1024 * MiB)

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> EmbeddedS3:
        """Start the server and wait until it answers HTTP. Idempotent."""
        if self.running:
            return self
        fixed_port = self.port is not None
        last_error: Exception | None = None
        # A port found free can be taken before the server binds it; pick another and try again.
        for _ in range(1 if fixed_port else 3):
            if not fixed_port:
                self.port = _free_port(self.host)
            try:
                self._start_subprocess() if self.mode == "subprocess" else self._start_thread()
                self._wait_ready()
                return self
            except Exception as exc:  # noqa: BLE001 - retried, then re-raised
                last_error = exc
                self.stop()
        raise RuntimeError(f"moto S3 server did not start: {last_error}") from last_error

    def _start_subprocess(self) -> None:
        env = {**os.environ, **self._env}
        out = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(os.getpid()), "1" if self.speedups else "0",
                 "1" if self._log_file else "0", "-H", self.host, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    def _start_thread(self) -> None:
        from moto.server import ThreadedMotoServer

        patch_moto()
        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        self._thread_server = server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"server process exited with code {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2.0):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is serving
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer from {self.endpoint_url} in {self.startup_timeout}s") from exc
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (terminate, then kill after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
        server, self._thread_server = self._thread_server, None
        if server is not None:
            server.stop()

    def reset(self) -> None:
        """Drop every bucket and object (moto's reset API)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10.0):
            pass

    def __enter__(self) -> EmbeddedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedS3:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
