"""`selfctx serve`: an OpenAI-compatible server for compressed inference (see selfctx.serve).

selfctx serve --model smollm2-135m --experts runs/experts --memory-dir runs/memories --port 8000
# then any OpenAI client: base_url=http://127.0.0.1:8000/v1; or `selfctx synth --backend openai ...`
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selfctx.commands import options as opt
from selfctx.errors import SelfctxError


def command(
    model: opt.BaseModel = ("smollm2-135m"),
    experts: opt.ExpertsFolder = None,
    native_context: opt.NativeContext = None,
    window: opt.Window = None,
    memory_budget_mb: Annotated[float, typer.Option(help="RAM for compressed memories (LRU).")] = 1024.0,
    memory_dir: Annotated[
        Path | None, typer.Option(help="Persist memories here; other processes reuse them.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_input_tokens: Annotated[int, typer.Option(help="Refuse (400) inputs longer than this.")] = 131_072,
    max_body_bytes: Annotated[int, typer.Option(help="Refuse (413) request bodies larger than this.")] = 8
    * 2**20,
    max_inflight: Annotated[
        int, typer.Option(help="Refuse (429) requests beyond this many in flight.")
    ] = 256,
    max_batch: Annotated[int, typer.Option(help="Requests sharing a memory decoded as one batch.")] = 64,
    answer_budget: Annotated[
        int, typer.Option(help="Tokens reserved for question + answer when routing.")
    ] = 512,
    served_name: Annotated[str | None, typer.Option(help="Model name reported by /v1/models.")] = None,
    dtype: opt.Dtype = "auto",
    device: opt.Device = None,
) -> None:
    """Serve the model + its experts over the OpenAI API, compressing each long context once."""
    import uvicorn

    from selfctx.compress import CompressedLM
    from selfctx.compress.model import check_compression_args
    from selfctx.serve import ServeConfig, create_app

    if experts is not None and not experts.is_dir():
        raise SelfctxError(f"expert folder {experts} does not exist: pass the folder `selfctx train` wrote")
    check_compression_args(experts, window=window, native_context=native_context)
    if not 0 <= port <= 65535:
        raise SelfctxError(f"port {port} is out of range: pass 0..65535")
    config = ServeConfig(
        model_name=served_name or model,
        max_input_tokens=max_input_tokens,
        max_body_bytes=max_body_bytes,
        max_inflight=max_inflight,
        max_batch=max_batch,
        answer_budget=answer_budget,
        memory_budget_mb=memory_budget_mb,
        memory_dir=memory_dir,
    )
    lm = CompressedLM.from_pretrained(
        model, experts=experts, window=window, native_context=native_context, dtype=dtype, device=device
    )
    lm.eval()
    app = create_app(lm, config)
    typer.echo(
        f"selfctx serve: {config.model_name} (experts x{', x'.join(map(str, lm.battery.ratios))}, window "
        f"{lm.window}, native {lm.native_context}) at http://{host}:{port}/v1",
        err=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=60
        )
    )
    try:
        server.run()  # SIGINT/SIGTERM: stop accepting, let in-flight requests finish (up to 60 s)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; the shutdown was orderly: exit 0
        pass
    finally:
        app.state.worker.stop()
        typer.echo("selfctx serve: stopped", err=True)
