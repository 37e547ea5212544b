"""Starting an entry point: the flags every entry shares, checked before the model loads, and the engine they load.

The CLI, ``describe``, the model worker, the OpenAI-compatible API and the web page take the same model flags
(``--model-path --model-base --device --load-8bit --load-4bit --sam-model``); the three servers add the same serving
flags (``--model-name --host --port --max-regions``); the entries that can generate with vLLM (the API, the worker,
the batch command) add ``--engine hf|vllm`` and ``--vllm-option`` (:func:`add_engine_flags`). They are declared once here (:func:`add_model_flags`,
:func:`add_server_flags`) so a flag reads, defaults and is checked the same way everywhere, and the engine is loaded
from them by one function (:func:`load_engine`) whose failures are one line naming the flag (:class:`StartupError`).
"""
import argparse
import asyncio
import json
import socket
import sys
from typing import Callable, Optional, Tuple

from rgpt_llava.regions.prompts import SAM_FLAG
from rgpt_llava.serve.engine import RegionEngine, model_name_of
from rgpt_llava.serve.inputs import MAX_REGIONS


class StartupError(Exception):
    """An entry point cannot start: the message names the flag and the problem (printed as ``error: ...``, exit 2)."""


def add_model_flags(parser: argparse.ArgumentParser, sam_help: str, controller: Optional[str] = None,
                    controller_help: str = "") -> None:
    """The flags that load a model: ``--model-path`` (required; with ``controller``, e.g. ``"--controller-url"``,
    one of the two is: the model in this process or the workers behind LLaVA's controller), ``--model-base``,
    ``--device``, ``--load-8bit``, ``--load-4bit`` and ``--sam-model`` (``sam_help``: what SAM does for this entry)."""
    from rgpt_llava.model.builder import device_arg
    if controller:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--model-path", help="serve this checkpoint in this process")
        source.add_argument(controller, help=controller_help)
    else:
        parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None)
    # None: cuda when available (RegionEngine.load and SamPrompter decide); the type refuses a device this machine
    # does not have while parsing, before anything loads
    parser.add_argument("--device", type=device_arg, default=None, help="cuda | cpu (default: cuda when available)")
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument(SAM_FLAG, default=None, metavar="PATH", help=sam_help)


def add_server_flags(parser: argparse.ArgumentParser, port: int) -> None:
    """What the three servers add to the model flags: the name clients ask for, where to listen, regions per
    request."""
    parser.add_argument("--model-name", default=None,
                        help="the name clients ask for (default: the checkpoint folder's)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--max-regions", type=int, default=MAX_REGIONS, help="regions per request")


ENGINES = ("hf", "vllm")


def vllm_option(text: str) -> Tuple[str, object]:
    """``KEY=VALUE`` of ``--vllm-option``: VALUE read as JSON (``2``, ``true``, ``0.9``), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. tensor_parallel_size=2")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """``--engine``: who generates -- ``hf`` (transformers' ``generate`` in this process, one request at a time) or
    ``vllm`` (vLLM's engine: continuous batching across requests; the vllm stack, docs/VLLM.md); ``--vllm-option``:
    more of vLLM's engine arguments (``tensor_parallel_size=2``, ``gpu_memory_utilization=0.8``, ...)."""
    parser.add_argument("--engine", choices=ENGINES, default="hf",
                        help="hf: transformers in this process; vllm: vLLM's engine (docs/VLLM.md). Default hf")
    parser.add_argument("--vllm-option", type=vllm_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a vLLM engine argument (repeatable), e.g. tensor_parallel_size=2; VALUE is JSON or a "
                             "string")


def add_conv_mode_flag(parser: argparse.ArgumentParser) -> None:
    """``--conv-mode``: the entries that build the prompt themselves (not the worker, whose clients send it built);
    left out, the checkpoint's own template (:func:`resolve_conv_mode_flag`)."""
    parser.add_argument("--conv-mode", default=None,
                        help="LLaVA's conversation template (default: the one the checkpoint was trained with, its "
                             "config.json's conv_mode; vicuna_v1 when it names none)")


def resolve_conv_mode_flag(args: argparse.Namespace) -> str:
    """``args.conv_mode`` filled in from the checkpoint (``--model-path``) when the flag was left out."""
    from rgpt_llava.prompt import resolve_conv_mode
    args.conv_mode = resolve_conv_mode(args.conv_mode, getattr(args, "model_path", None))
    return args.conv_mode


def check_at_least_one(parser: argparse.ArgumentParser, args: argparse.Namespace, *dests: str) -> None:
    """The parser's error (exit 2) for a count flag below 1, e.g. ``--max-regions must be at least 1, got 0``."""
    for dest in dests:
        if getattr(args, dest) < 1:
            parser.error(f"--{dest.replace('_', '-')} must be at least 1, got {getattr(args, dest)}")


def check_listen_address(host: str, port: int) -> None:
    """Bind ``host:port`` once before the model loads (the API, the worker and the page): a port out of range or
    taken, or a host this machine does not have, is then a line naming the flag rather than a traceback after minutes
    of loading. The socket is closed at once; the server binds its own."""
    if not 1 <= port <= 65535:
        raise StartupError(f"--port {port}: a port is 1-65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise StartupError(f"--host {host}: no such host ({e.strerror})") from e
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and gradio do
        try:
            probe.bind(address)
        except OSError as e:
            raise StartupError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from e


def served_name(args: argparse.Namespace) -> str:
    """The name a server lists its model by: ``--model-name``, else the checkpoint folder's (LLaVA's rule)."""
    return args.model_name or model_name_of(args.model_path)


def load_engine(args: argparse.Namespace, asynchronous: bool = False, **engine_args) -> RegionEngine:
    """The engine the model flags ask for (``engine_args``: :meth:`RegionEngine.load`'s own: ``max_regions``,
    ``name``; ``sam_model=None`` for an entry that used SAM itself before loading the model). A checkpoint or SAM
    folder that cannot be loaded is a :class:`StartupError` naming its flag. With ``--engine vllm``
    (:func:`add_engine_flags`): a :class:`rgpt_llava.vllm.engine.VLLMRegionEngine`, or with ``asynchronous`` the
    ``AsyncVLLMRegionEngine`` for a server (load it inside the server's event loop)."""
    from rgpt_llava.model.builder import CheckpointError
    engine_args = {"sam_model": args.sam_model, **engine_args}
    if getattr(args, "engine", "hf") == "vllm":
        return load_vllm_engine(args, asynchronous, **engine_args)
    try:
        return RegionEngine.load(args.model_path, args.model_base, args.device, args.load_8bit, args.load_4bit,
                                 **engine_args)
    except (CheckpointError, ValueError, FileNotFoundError, NotImplementedError) as e:
        # SAM's errors name their flag already; the checkpoint's are the loader's words about the folder
        where = "" if str(e).startswith(SAM_FLAG) else f"--model-path {args.model_path}: "
        raise StartupError(f"{where}{e}") from e


def load_vllm_engine(args: argparse.Namespace, asynchronous: bool, **engine_args) -> RegionEngine:
    """:func:`load_engine` for ``--engine vllm``."""
    from rgpt_llava.model.builder import CheckpointError
    for flag in ("load_8bit", "load_4bit"):
        if getattr(args, flag, False):
            raise StartupError(f"--{flag.replace('_', '-')} is the HF engine's quantisation; with --engine vllm pass "
                               f"vLLM's own, e.g. --vllm-option quantization=bitsandbytes")
    try:
        from rgpt_llava.vllm.engine import AsyncVLLMRegionEngine, VLLMRegionEngine
        import vllm  # noqa: F401
    except ImportError as e:
        raise StartupError(f"--engine vllm: vLLM is not installed here ({e}); install the vllm stack "
                           f"(RGPT_STACK=vllm bash scripts/install.sh, docs/VLLM.md)") from None
    cls = AsyncVLLMRegionEngine if asynchronous else VLLMRegionEngine
    try:
        return cls.load(args.model_path, args.model_base, device=args.device or "cpu",
                        vllm_options=dict(getattr(args, "vllm_option", [])), **engine_args)
    except (CheckpointError, FileNotFoundError) as e:
        where = "" if str(e).startswith(SAM_FLAG) else f"--model-path {args.model_path}: "
        raise StartupError(f"{where}{e}") from e
    except Exception as e:  # noqa: BLE001  vLLM's own refusals (an option it does not know, no memory for the cache)
        raise StartupError(f"--engine vllm: vLLM could not start on {args.model_path} ({type(e).__name__}: "
                           f"{e})") from e


def load_sam(args: argparse.Namespace):
    """``--sam-model``'s :class:`rgpt_llava.sam.SamPrompter` (None without the flag), for an entry without a model
    in this process; a folder that is not SAM is a :class:`StartupError`."""
    if not args.sam_model:
        return None
    from rgpt_llava.sam import SamModelError, SamPrompter
    try:
        return SamPrompter(args.sam_model, args.device)
    except SamModelError as e:
        raise StartupError(str(e)) from e


async def serve_until_unhealthy(app, host: str, port: int, healthy: Callable[[], bool],
                                on_stop: Optional[Callable[[], None]] = None, poll_s: float = 0.5,
                                grace_s: float = 5.0) -> int:
    """Serve ``app`` with uvicorn until SIGTERM / Ctrl-C (status 0) or until ``healthy()`` turns False (vLLM's
    engine process died): requests then get 503s for ``grace_s`` more seconds (clients and the health endpoint see
    why), and the server stops with status 1 for a supervisor to restart it -- as vLLM's own server exits when its
    engine is dead. ``on_stop`` runs once the server has stopped serving, either way (vLLM's engine processes are
    stopped there: uvicorn re-raises SIGTERM after its shutdown, which would end this process before a ``finally``
    of the caller could)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            await super().shutdown(sockets=sockets)
            if on_stop is not None:
                on_stop()

    server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10))
    stopped = []

    async def watch():
        while not server.should_exit:
            await asyncio.sleep(poll_s)
            if server.should_exit:      # stopping anyway (SIGTERM): the engine is being closed, not dead
                return
            if not healthy():
                stopped.append(True)
                print("error: the engine has stopped (its process is gone); answering 503 and exiting with status 1 "
                      "for a supervisor to restart this server", file=sys.stderr, flush=True)
                await asyncio.sleep(grace_s)
                server.should_exit = True
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await server.serve()
    finally:
        watcher.cancel()
    return 1 if stopped else 0
