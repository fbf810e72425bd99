"""Starting and stopping ``tritonserver`` on a model repository.

The binary is ``$TRITONSERVER`` (e.g. ``/opt/tritonserver/bin/tritonserver`` in NVIDIA's container,
whose own backends are then used), else the one bundled in the ``nvidia-pytriton`` wheel. The bundled
server needs a prepared backend folder (the Python stub matching this interpreter) and this
interpreter's libpython ahead of the system one, or the stub runs another Python without ckbd.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ckbd.errors import CkbdError, require


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    http_port: int = 0  # 0: a free port
    grpc_port: int = 0
    metrics_port: int | None = None  # None: metrics off
    startup_timeout_s: float = 120.0
    log_verbose: int = 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _bundled_root() -> Path:
    pytriton = require("pytriton", "serve", "the bundled Triton server")
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise CkbdError(f"{root} has no tritonserver binary; set TRITONSERVER to a tritonserver executable")
    return root


@dataclass
class TritonServer:
    """A running ``tritonserver``; use as a context manager, or call :meth:`start` and :meth:`stop`."""

    repo: Path
    options: ServerOptions = field(default_factory=ServerOptions)
    log_path: Path | None = None  # None: the server's output goes to this process's stdout/stderr
    process: subprocess.Popen | None = None  # type: ignore[type-arg]
    shm_prefix: str = ""
    _workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.options.host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.options.host}:{self.options.grpc_port}"

    def start(self) -> TritonServer:
        if not (self.repo / "ckbd_decode" / "config.pbtxt").is_file():
            raise CkbdError(f"{self.repo} is not a ckbd model repository (write one with: ckbd serve repo -o DIR)")
        opts = self.options
        opts.http_port = opts.http_port or free_port(opts.host)
        opts.grpc_port = opts.grpc_port or free_port(opts.host)
        self._workdir = Path(tempfile.mkdtemp(prefix="ckbd-triton-"))
        self.shm_prefix = f"ckbd{os.getpid()}x{opts.http_port}_"
        command, env = self._command()
        out = open(self.log_path, "ab") if self.log_path is not None else None  # noqa: SIM115
        try:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            if out is not None:
                out.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self) -> tuple[list[str], dict[str, str]]:
        opts = self.options
        env = dict(os.environ)
        explicit = os.environ.get("TRITONSERVER")
        args = [f"--model-repository={self.repo.resolve()}",
                f"--http-address={opts.host}", f"--http-port={opts.http_port}",
                f"--grpc-address={opts.host}", f"--grpc-port={opts.grpc_port}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                "--exit-timeout-secs=20", f"--log-verbose={opts.log_verbose}"]
        if opts.metrics_port is None:
            args.append("--allow-metrics=false")
        else:
            args += ["--allow-metrics=true", f"--metrics-address={opts.host}", f"--metrics-port={opts.metrics_port}"]
        if explicit:
            return [explicit, *args], env
        root = _bundled_root()
        assert self._workdir is not None
        backends = self._workdir / "backends"
        shutil.copytree(root / "backends", backends)
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise CkbdError(f"the bundled Triton server has no Python {version} stub")
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        libs = root.parent.parent / "nvidia_pytriton.libs"
        # This interpreter's libpython first, so the stub embeds the Python that has ckbd installed.
        paths = [sysconfig.get_config_var("LIBDIR") or "", str(libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        args += [f"--backend-directory={backends}", f"--cache-directory={root / 'caches'}"]
        return [str(root / "bin" / "tritonserver"), *args], env

    def _wait_ready(self) -> None:
        url = f"http://{self.options.host}:{self.options.http_port}/v2/health/ready"
        deadline = time.monotonic() + self.options.startup_timeout_s
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CkbdError(f"tritonserver exited with code {self.process.returncode} while starting"
                                + self._log_hint())
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise CkbdError(f"tritonserver was not ready within {self.options.startup_timeout_s:.0f} s" + self._log_hint())

    def _log_hint(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        errors = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.startswith("E")]
        return f": {errors[-1]}" if errors else f" (log: {self.log_path})"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT (Triton's clean shutdown), then SIGKILL after ``timeout_s``; returns the exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            code = self.process.returncode
            if code != 0:
                _remove_shm(self.shm_prefix)
            self.process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return code

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def shm_segments(prefix: str) -> list[Path]:
    """Shared-memory segments whose name starts with ``prefix`` (the Python backend's regions)."""
    shm = Path("/dev/shm")
    return sorted(shm.glob(f"{prefix}*")) if prefix and shm.is_dir() else []


def _remove_shm(prefix: str) -> None:
    """After an unclean exit only: the stubs could not unlink their regions themselves."""
    for path in shm_segments(prefix):
        path.unlink(missing_ok=True)
