"""``ckbd serve repo`` (write a Triton model repository) and ``ckbd serve run`` (start tritonserver on it)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import typer

serve_app = typer.Typer(help="Serve encode/decode with NVIDIA Triton Inference Server.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(serve_app, name="serve")


@serve_app.command("repo")
def repo_command(
    model_dir: Path = typer.Argument(None, help="Exported model directory (default: the shipped model)."),
    out: Path = typer.Option(..., "--output", "-o", help="Folder to write the model repository into (new or empty)."),
    instances: int = typer.Option(1, "--instances", help="Instances per model (Python processes; GPU instances of stage models)."),
    max_batch: int = typer.Option(4, "--max-batch", help="Requests the dynamic batcher hands one call."),
    split: bool = typer.Option(False, "--split", help="Stage graphs as their own models, called by a BLS model."),
    stage_backend: str = typer.Option("auto", "--stage-backend",
                                      help="With --split: auto (tensorrt_plan if engines exist, else onnxruntime_onnx), "
                                           "onnxruntime, tensorrt, or python (stand-ins for servers without those backends)."),
    threads: int = typer.Option(1, "--threads", help="ONNX Runtime threads per Python-backend instance."),
    max_pixels: int = typer.Option(None, "--max-pixels", help="Largest image a request may decode or encode."),
    max_bytes: int = typer.Option(None, "--max-bytes", help="Largest bitstream a request may send."),
    max_memory: str = typer.Option(None, "--max-memory",
                                   help="Peak-memory budget per instance, e.g. 2G (default: 1.5G, at most half "
                                        "the memory available); larger images are tiled, or refused."),
    cpu: bool = typer.Option(False, "--cpu", help="With --split: put the stage models on CPU instead of GPU."),
) -> None:
    """Write a Triton model repository with ckbd_decode and ckbd_encode."""
    from ckbd.runtime.memory import parse_memory
    from ckbd.serving.repository import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, RepoOptions, write_repository

    options = RepoOptions(instances=instances, max_batch=max_batch, split=split, stage_backend=stage_backend,
                          threads=threads, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                          max_bytes=max_bytes or DEFAULT_MAX_BYTES,
                          max_memory=parse_memory(max_memory) if max_memory else None, gpu=not cpu)
    names = write_repository(out, model_dir, options)
    typer.echo(f"wrote {out}: {', '.join(names)}")


@serve_app.command("run")
def run_command(
    repo: Path = typer.Argument(..., help="Model repository written by `ckbd serve repo`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP port (0: a free one)."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port (0: a free one)."),
    metrics_port: int = typer.Option(None, "--metrics-port", help="Prometheus metrics port (off unless given)."),
    log_verbose: int = typer.Option(0, "--log-verbose", help="Triton's verbose log level."),
) -> None:
    """Start tritonserver ($TRITONSERVER, else the one in nvidia-pytriton) and stop it cleanly on Ctrl-C/SIGTERM."""
    from ckbd.serving.server import ServerOptions, TritonServer

    server = TritonServer(repo, ServerOptions(host=host, http_port=http_port, grpc_port=grpc_port,
                                              metrics_port=metrics_port, log_verbose=log_verbose))

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        server.start()
        typer.echo(f"serving {repo}: HTTP {server.http_url}, gRPC {server.grpc_url} (Ctrl-C to stop)", err=True)
        code = server.wait()
        if code != 0:
            raise typer.Exit(code)
    except KeyboardInterrupt:
        typer.echo("stopping", err=True)
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
