"""`llmkit serve MODEL`: a model behind an OpenAI-compatible HTTP API, on transformers' own serving code.

Design choices:
- transformers' serving app (`transformers.cli.serving`: `build_server`, its `ChatCompletionHandler` and
  `CompletionHandler`, streaming over SSE, stop strings, seeds, the inference thread, cancelling a generation
  whose client went away) serves the routes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
  `/health`. The model runs in a process of its own, as transformers runs every served model (its
  `ModelManager` and `EngineClient`): llmkit pins the manager to one model and gives it a loader (`PinnedLoader`)
  that loads it as every llmkit command loads one (`llmkit.loading.load_model`: a run, an adapter run (merged into
  its base), an exported folder or a Hub id, with the run's generation config and chat template).
- The server loads the model once itself before anything starts, so that a missing model or a bad adapter is one
  line and exit code 2, then keeps only its config, generation config and tokenizer (the request checks and
  transformers' handlers read them); the model's process loads the weights again (from the page cache). A model
  process that dies stops the server, with one line and exit code 1, as `transformers serve` stops. That process
  only generates, so an llmkit-gpt model keeps its CPU decoding layout there for good (`keep_cpu_decode_layout`):
  its generate() would otherwise copy the linear weights at every request, a first-token delay.
- Every request is checked before transformers sees it, so a bad one is a 4xx with an OpenAI-style error body
  (`{"error": {"message", "type", "param", "code"}}`), never a 500 or a traceback: malformed JSON, fields of the
  wrong type, an unknown model name, an empty message list, `n` other than 1, a prompt that does not fit the
  model's context, and `max_tokens` past it (the message gives the limit). Without `max_tokens`, generation
  stops at the end of the context (transformers' default of 1024 new tokens would run past a small model's
  learned positions) or at the model's EOS / end-of-turn token.
- The chat page (`llmkit/static/chat.html`, at `/`): one static file with no network fetch but this server's
  API, so it works offline. It talks to `/v1/chat/completions` like any client (to `/v1/completions` for a model
  without a chat template), shows tokens as they stream, keeps the conversation, has a stop button (the request
  is aborted; the server cancels its generation) and shows the sampling settings it sends.
- A model without a chat template (a plain pretraining run) is served on `/v1/completions`; chat requests to it
  get a 400 that says so. An empty completion prompt starts from the EOS token, as `llmkit generate` does.
- Binds 127.0.0.1 unless `--host` says otherwise; `--api-key KEY` (or `LLMKIT_API_KEY`) makes every request
  without `Authorization: Bearer KEY` a 401 (except `/health` and the page, which asks for the key).
  `trust_remote_code` stays off. A port in use, a missing model or a bad adapter is one line and exit code 2
  before anything starts; once it serves, SIGINT and SIGTERM stop the server and its model process cleanly
  (uvicorn's shutdown) with exit code 0. transformers' `/load_model` and `/reset` routes are not served (one
  pinned model).
- One generation at a time, on the model process's generation thread (transformers' continuous batching needs an
  accelerator's paged attention): concurrent clients queue, and each gets the text it would get alone.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import pathlib
import signal
import socket
from typing import Any

from transformers.cli.serving.model_manager import ModelLoader

from .errors import ConfigError, EnvironmentFault, first_line
from .models.generation import context_length

HOST, PORT = "127.0.0.1", 8000
SERVING_HINT = 'pip install "llmkit[serve]" (transformers\' serving extras: fastapi, uvicorn, openai, pydantic)'


def check_serving_installed() -> None:
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise ConfigError(f"llmkit serve needs transformers' serving dependencies; {SERVING_HINT}")


def check_port(host: str, port: int) -> None:
    """A port that is taken is the user's input to change, said before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(f"port {port} on {host} is not free ({err.strerror or err}); pass another --port, or "
                              "stop what is listening there") from None


class OpenAIError(Exception):
    """A request the server refuses: its HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# field: (accepted JSON types, description) of the fields llmkit checks; transformers checks the rest by name
_TYPES = {
    "model": ((str,), "a string"),
    "stream": ((bool,), "true or false"),
    "max_tokens": ((int,), "a positive integer"),
    "max_completion_tokens": ((int,), "a positive integer"),
    "temperature": ((int, float), "a number >= 0"),
    "top_p": ((int, float), "a number in (0, 1]"),
    "seed": ((int,), "an integer"),
    "n": ((int,), "1"),
    "stop": ((str, list), "a string or a list of strings"),
    "frequency_penalty": ((int, float), "a number"),
}


class RequestChecks:
    """The checks of one served model (its name, config and tokenizer) on request bodies, in place: the
    defaults llmkit fills in are written into the body transformers then reads."""

    def __init__(self, name: str, config, tokenizer):
        self.name, self.tokenizer = name, tokenizer
        self.context = context_length(config)
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))

    def common(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise OpenAIError(400, "the request body must be a JSON object")
        for field, (types, what) in _TYPES.items():
            value = body.get(field)
            if value is None:
                continue
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                raise OpenAIError(400, f"{field} must be {what}, got {json.dumps(value)}", param=field,
                                  code="invalid_type")
        if body.get("model") not in (None, self.name):
            raise OpenAIError(404, f"the model {body['model']!r} is not served here; this server serves "
                              f"{self.name!r} (GET /v1/models)", param="model", code="model_not_found")
        body["model"] = self.name
        for field in ("max_tokens", "max_completion_tokens"):
            if body.get(field) is not None and body[field] < 1:
                raise OpenAIError(400, f"{field} must be a positive integer, got {body[field]}", param=field)
        if body.get("temperature") is not None and body["temperature"] < 0:
            raise OpenAIError(400, f"temperature must be >= 0, got {body['temperature']}", param="temperature")
        if body.get("top_p") is not None and not 0 < body["top_p"] <= 1:
            raise OpenAIError(400, f"top_p must be in (0, 1], got {body['top_p']}", param="top_p")
        if body.get("n") not in (None, 1):
            raise OpenAIError(400, f"n={body['n']} is not supported: one choice per request (send n=1, or several "
                              "requests)", param="n")
        body.pop("n", None)
        stop = body.get("stop")
        if isinstance(stop, list) and not all(isinstance(s, str) and s for s in stop) or stop == "":
            raise OpenAIError(400, "stop must be a non-empty string or a list of them", param="stop")
        if isinstance(stop, str):
            body["stop"] = [stop]

    def fit(self, body: dict, prompt_tokens: int) -> None:
        """The prompt and the answer within the model's context; the answer's default length is the room left."""
        room = self.context - prompt_tokens
        if room < 1:
            raise OpenAIError(400, f"the prompt is {prompt_tokens} tokens; this model's context is {self.context} "
                              "tokens, and the answer needs at least one: shorten the prompt",
                              param="messages" if "messages" in body else "prompt", code="context_length_exceeded")
        field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        asked = body.get(field)
        if asked is not None and asked > room:
            raise OpenAIError(400, f"{field}={asked} does not fit: the prompt is {prompt_tokens} tokens and the "
                              f"context {self.context}, so {field} may be at most {room}", param=field,
                              code="context_length_exceeded")
        if asked is None:
            body["max_tokens"] = room

    def chat(self, body: dict) -> None:
        self.common(body)
        if not self.has_chat_template:
            raise OpenAIError(400, f"{self.name} has no chat template (it was not trained with data.format=instruct): "
                              "use /v1/completions with a prompt", param="messages", code="no_chat_template")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise OpenAIError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise OpenAIError(400, f"messages[{i}] must be an object with a string role and string content",
                                  param=f"messages[{i}]")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"]
        self.fit(body, len(ids))

    def completion(self, body: dict) -> None:
        self.common(body)
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise OpenAIError(400, f"prompt must be a string, got {json.dumps(prompt)[:80]}", param="prompt",
                              code="invalid_type")
        if prompt == "":  # as llmkit generate: an empty prompt starts from the EOS token
            body["prompt"] = prompt = self.tokenizer.eos_token
        self.fit(body, len(self.tokenizer(prompt)["input_ids"]))


class PinnedLoader(ModelLoader):
    """transformers' model loader, pinned to the one model llmkit serves. The model's process (transformers runs each
    model in a process of its own) loads it as every llmkit command does (`llmkit.loading.load_model`: a run, an
    adapter run merged into its base, an exported folder or a Hub id); the API server reads the config, generation
    config and tokenizer llmkit loaded here, which stay in this process (they are not pickled to the model's)."""

    _LOCAL = ("_config", "_generation_config", "_tokenizer")

    def __init__(self, name: str, adapter: str | None, device: str | None, *, config, generation_config, tokenizer):
        super().__init__(device=device or "auto", dtype="auto")
        self.name, self.adapter, self.llmkit_device = name, adapter, device
        self._config, self._generation_config, self._tokenizer = config, generation_config, tokenizer

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key not in self._LOCAL}

    def load_model_and_processor(self, model_id: str, on_progress=None):
        import threading

        from tqdm import tqdm

        from .loading import load_model, quiet_library_output
        from .models.decode_layout import keep_cpu_decode_layout
        from .models.modeling_llmkit_gpt import LlmkitGPTPreTrainedModel

        quiet_library_output()  # the model's process says what the server says: nothing, unless it goes wrong
        # tqdm's lock (peft's merge makes a bar, disabled or not) as a thread lock: its default, a multiprocessing
        # semaphore, outlives this process, which the server stops with SIGTERM (a "leaked semaphore" warning)
        tqdm.set_lock(threading.RLock())
        model, tokenizer = load_model(self.name, adapter=self.adapter, device=self.llmkit_device, merge=True)
        if isinstance(model, LlmkitGPTPreTrainedModel):  # its generate() would swap the layout at every request
            keep_cpu_decode_layout(model)
        return model, tokenizer

    def load_config(self, model_id: str):
        return self._config, self._generation_config

    def load_processor(self, model_id: str):
        return self._tokenizer


def build_app(name: str, loader: PinnedLoader, *, api_key: str | None = None):
    """The FastAPI app: transformers' server with llmkit's model manager, request checks and errors. The model's
    process starts here, and is loaded when this returns (`app.state.models` is the manager)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException  # fastapi's and the router's own (an unknown path: 404)
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    config, _ = loader.load_config(name)
    checks = RequestChecks(name, config, loader.load_processor(name))

    class Manager(ModelManager):
        """Pinned to the model llmkit loaded (a run, adapter run, exported folder or Hub id)."""

        def list_models(self, cache_dir=None) -> list[dict]:
            return [{"id": name, "object": "model", "created": 0, "owned_by": "llmkit",
                     "context_length": checks.context, "chat": checks.has_chat_template}]

    class Chat(ChatCompletionHandler):
        async def handle_request(self, body, request_id):
            checks.chat(body)
            return await super().handle_request(body, request_id)

    class Completion(CompletionHandler):
        async def handle_request(self, body, request_id):
            checks.completion(body)
            return await super().handle_request(body, request_id)

    state = GenerationState(continuous_batching=False)
    manager = Manager(loader, state, force_model=name)
    app = build_server(manager, Chat(model_manager=manager, generation_state=state),
                       completion_handler=Completion(model_manager=manager, generation_state=state),
                       response_handler=ResponseHandler(model_manager=manager, generation_state=state),
                       transcription_handler=TranscriptionHandler(manager),
                       systemone_handler=SystemOneHandler(model_manager=manager, generation_state=state))
    app.state.models = manager
    # one pinned model: no loading of others (`/load_model`), and no `/reset`, which would stop its process for the
    # next request to wait for a new one
    app.router.routes = [route for route in app.router.routes
                         if getattr(route, "path", None) not in ("/load_model", "/reset")]

    @app.exception_handler(OpenAIError)
    async def _refused(_request: Request, err: OpenAIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _malformed(_request: Request, err: RequestValidationError):
        problems = err.errors()
        first = problems[0] if problems else {}
        kind = first.get("type", "")
        message = ("the request body is not valid JSON" if "json" in kind else
                   f"the request body is not a JSON object ({first.get('msg', kind)})")
        return JSONResponse(OpenAIError(400, message).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, err: HTTPException):
        status = err.status_code
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse(OpenAIError(status, str(err.detail), kind=kind).body(), status_code=status)

    @app.exception_handler(Exception)
    async def _fault(_request: Request, err: Exception):  # a bug: said in one line, the server goes on
        return JSONResponse(OpenAIError(500, f"the server failed on this request: {first_line(err)}",
                                        kind="server_error").body(), status_code=500)

    page = (pathlib.Path(__file__).parent / "static" / "chat.html").read_text()

    @app.get("/", include_in_schema=False)
    def chat_page():
        from fastapi.responses import HTMLResponse

        return HTMLResponse(page)

    if api_key:
        @app.middleware("http")
        async def _authorize(request: Request, call_next):
            if request.url.path in ("/health", "/"):  # start-up checks, and the page (it asks for the key)
                return await call_next(request)
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
                return JSONResponse(OpenAIError(401, "missing or wrong API key: send Authorization: Bearer KEY",
                                                code="invalid_api_key").body(), status_code=401)
            return await call_next(request)

    return app


def serve(name: str, *, adapter: str | None = None, host: str = HOST, port: int = PORT, api_key: str | None = None,
          device: str | None = None, log=print) -> int:
    """Load `name` (and `adapter`) and serve it until SIGINT or SIGTERM. Returns the exit code (0). The model's
    process is spawned: a script calling this runs it under `if __name__ == "__main__":`."""
    check_serving_installed()
    check_port(host, port)
    from .loading import check_device, load_model

    if device:
        check_device(device)
    # loaded here once on the CPU (every error: one line, exit 2), for its config, generation config and tokenizer;
    # transformers' model process loads its own on the device (the same files, from the page cache)
    model, tokenizer = load_model(name, adapter=adapter, device="cpu", merge=True)
    config, generation_config = model.config, model.generation_config
    del model
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            """uvicorn's, without raising the signal again after the shutdown: SIGINT and SIGTERM are how this
            server is asked to stop, and it stops cleanly, with exit code 0."""
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    served = f"{name}+{adapter}" if adapter else name
    loader = PinnedLoader(name, adapter, device, config=config, generation_config=generation_config,
                          tokenizer=tokenizer)
    try:
        app = build_app(served, loader, api_key=api_key or os.environ.get("LLMKIT_API_KEY") or None)
    except RuntimeError as err:  # the model's process failed to load what this process just loaded
        raise EnvironmentFault(f"the model's process did not start: {first_line(err)}") from None
    models = app.state.models
    # its death is said once, by this command's own line (transformers logs it at ERROR in this process too)
    logging.getLogger("transformers.cli.serving.model_manager").setLevel(logging.CRITICAL)

    died: list[str] = []

    async def stop_if_the_model_died() -> None:  # as `transformers serve`: a dead model process stops the server
        dead = [engine.fatal_error or "" for engine in models.engines.values() if engine.is_dead]
        if dead and not server.should_exit:  # not a signal to the whole process group, which stops both
            died.append(dead[0])
            server.should_exit = True

    settings = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                              callback_notify=stop_if_the_model_died, timeout_notify=5)
    server = Server(settings)
    log(f"serving {served} on http://{host}:{port}/v1 (OpenAI-compatible; context {context_length(config)} tokens"
        f"{', chat' if getattr(tokenizer, 'chat_template', None) else ', completions only'})")
    try:
        server.run()
    except OSError as err:  # the port was taken between the check and the bind
        raise EnvironmentFault(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    finally:
        models.shutdown()
    if not server.started:
        raise EnvironmentFault(f"the server on {host}:{port} did not start; see the lines above")
    if died:
        reason = died[0].rstrip(".") or "The model's process stopped"
        raise EnvironmentFault(f"{reason[:1].lower()}{reason[1:]}; start the server again")
    return 0
