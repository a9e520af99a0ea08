"""The OpenAI-compatible server as a Ray Serve deployment (``pip install "metallic[ray]"``).

Each replica owns one engine: it loads the model with ``parallel`` sequence slots, starts the
continuous-batching Scheduler and serves the app of :mod:`.app` (the routes, errors, auth and
metrics of ``metallic-server``: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/health``, ``/metrics``, the chat page) through ``@serve.ingress``. Ray's HTTP proxy spreads
requests over the replicas and Serve's autoscaler adds or removes replicas on ongoing requests::

    from ray import serve
    from metallic.server.ray import metallic_app

    serve.run(metallic_app("smollm2", parallel=8, threads=4), route_prefix="/")

or ``serve run metallic.server.ray:app_builder model=smollm2 parallel=8 threads=4``. See
``docs/serving.md``.

How a request reaches its replica's engine: ``serve.ingress`` freezes its ASGI app when the class
is decorated, before any replica exists, whereas :func:`.app.create_app` builds an app around the
engine a replica loads in ``__init__``. So the ingress app is :class:`_ReplicaIngress`, a
stateless ASGI object that hands each request to the app of the replica serving it
(``serve.get_replica_context().servable_object``) and answers Ray's lifespan events itself; the
engine lives exactly as long as the replica (``__init__`` to ``__del__``).

Importing this module needs no Ray: arguments are validated first (typed ``InvalidArgument``
naming the parameter), Ray is imported when the application is built.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..cli import DEVICES, KV_CACHE_DTYPES
from ..errors import Closed, InvalidArgument, NotImplementedFeature
from .relay import DEFAULT_INTERVAL_S

_KV_DTYPES = KV_CACHE_DTYPES
_STOP_TIMEOUT_S = 5.0  # what the scheduler thread gets to end after Ray's graceful shutdown

log = logging.getLogger("ray.serve")  # Serve writes it to the replica's log file


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """What each replica loads and serves (validated by :func:`metallic_app`)."""

    model: str | None
    parallel: int
    threads: int
    context_length: int
    batch_size: int
    kv_cache_dtype: str
    device: str
    max_queue: int
    model_id: str | None
    api_key: str | None
    cors_origins: tuple[str, ...]
    draft: str | None = None  # "prompt-lookup", a draft model (path or name), or None
    num_draft_tokens: int = 6
    stream_interval_ms: float = 1000.0 * DEFAULT_INTERVAL_S  # relay.py


class MetallicReplica:
    """One Serve replica: one model with ``parallel`` slots, its running Scheduler and the
    server app over them (``asgi_app``). Ray calls ``check_health`` periodically and ``__del__``
    once the replica's requests are done (or ``graceful_shutdown_timeout_s`` passed)."""

    def __init__(self, settings: EngineSettings):
        from .app import create_app, load_options, open_state

        self._closed = False
        self.state = open_state(
            settings.model,
            load_options(settings),
            draft=settings.draft,
            num_draft_tokens=settings.num_draft_tokens,
            max_queue=settings.max_queue,
            model_id=settings.model_id,
            api_key=settings.api_key,
            stream_interval=settings.stream_interval_ms / 1000.0,
        )
        try:
            self.asgi_app = create_app(self.state, cors_origins=settings.cors_origins)
            self.state.scheduler.start()
        except BaseException:
            self.state.close()
            raise
        model_id, model = self.state.model_id, self.state.model
        log.info(
            "metallic replica: %s on %s, %d slots of %d tokens, threads: %d",
            model_id,
            model.device,
            settings.parallel,
            settings.context_length,
            settings.threads,
        )

    def check_health(self) -> None:
        """Raises (Ray then replaces the replica) when the engine can no longer serve."""
        state = self.state
        if self._closed or state.model.closed:
            raise Closed("[ray replica] check_health: the model is closed")
        if not _scheduler_alive(state.scheduler):
            raise Closed("[ray replica] check_health: the scheduler thread has stopped")

    def shutdown(self) -> None:
        """Refuses new requests, cancels those still running (Ray has already waited for them)
        and frees the model. Idempotent."""
        state = getattr(self, "state", None)
        if state is None or self._closed:
            return
        self._closed = True
        state.ready = False
        state.scheduler.stop(drain=False, timeout=_STOP_TIMEOUT_S)
        if _scheduler_alive(state.scheduler):  # it holds the model's lock: close() would block
            log.warning("metallic replica: the scheduler did not stop; the model stays open")
            return
        state.close()
        log.info("metallic replica: scheduler stopped, model closed")

    def __del__(self):
        self.shutdown()


def _scheduler_alive(scheduler) -> bool:
    return scheduler.alive


class _ReplicaIngress:
    """The ASGI app given to ``serve.ingress``: forwards each request to the app of the replica
    serving it; answers the lifespan protocol itself (the engine's lifetime is the replica's)."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _answer_lifespan(receive, send)
            return
        from ray import serve

        replica = serve.get_replica_context().servable_object
        await replica.asgi_app(scope, receive, send)


async def _answer_lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _serve():
    try:
        from ray import serve
    except ImportError as exc:
        raise NotImplementedFeature(
            "[metallic_app] ray: expected Ray Serve (pip install 'metallic[ray]'), got none "
            f"importable ({exc})"
        ) from exc
    return serve


@functools.cache
def deployment():
    """The Ray Serve ``Deployment`` of :class:`MetallicReplica` behind the server's routes
    (built once, on first use). :func:`metallic_app` gives it its options."""
    serve = _serve()
    return serve.deployment(name="metallic")(serve.ingress(_ReplicaIngress())(MetallicReplica))


# ----------------------------------------------------------------------------- the builder


def metallic_app(
    model: str | os.PathLike | None = None,
    *,
    parallel: int = 4,
    threads: int | None = None,
    context_length: int = 4096,
    batch_size: int = 256,
    kv_cache_dtype: str = "f16",
    device: str = "auto",
    max_queue: int = 256,
    model_id: str | None = None,
    api_key: str | None = None,
    cors_origins: tuple[str, ...] | list[str] = (),
    draft: str | os.PathLike | None = None,
    num_draft_tokens: int = 6,
    stream_interval_ms: float = 1000.0 * DEFAULT_INTERVAL_S,
    num_replicas: int | str = "auto",
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    max_ongoing_requests: int | None = None,
    target_ongoing_requests: float | None = None,
    resources: Mapping[str, float] | None = None,
    ray_actor_options: Mapping[str, Any] | None = None,
    autoscaling_config: Mapping[str, Any] | None = None,
    drain_timeout: float = 60,
    name: str = "metallic",
):
    """A Ray Serve application of metallic's OpenAI-compatible server: ``serve.run`` it.

    Engine (per replica, as ``metallic.load`` and ``metallic-server``): ``model`` (a GGUF file,
    HF folder or registry name; a path that exists here is made absolute, on a cluster it must
    exist on every node), ``parallel`` slots of ``context_length`` tokens, ``batch_size``,
    ``kv_cache_dtype``, ``device``, ``max_queue`` (scheduler requests waiting for a slot; 429
    beyond), ``model_id`` (what ``/v1/models`` reports; default the file name), ``api_key``
    (``Authorization: Bearer`` required on ``/v1/*`` and ``/metrics``), ``cors_origins``,
    ``draft`` (speculative decoding for every request: ``"prompt-lookup"`` or a smaller model
    sharing the vocabulary, loaded in each replica with the same slots), ``num_draft_tokens`` and
    ``stream_interval_ms`` (metallic-server's ``--stream-interval-ms``, 0 .. 1000).

    Placement: ``threads`` CPU threads per replica, which is also the ``num_cpus`` Ray reserves
    for it (None: ``ray_actor_options["num_cpus"]``, default 1). ``resources``: custom Ray
    resources per replica, e.g. ``{"metal": 1}`` on Macs started with ``ray start
    --resources='{"metal": 1}'`` (Ray does not schedule Apple GPUs itself). ``ray_actor_options``:
    passed through (``runtime_env``, ``memory``, ...), except ``resources``.

    Scaling: ``num_replicas="auto"`` autoscales between ``min_replicas`` (1) and
    ``max_replicas`` (4) on ongoing requests, aiming at ``target_ongoing_requests`` per replica
    (default ``parallel``: a replica whose slots are all busy on average gets company);
    ``autoscaling_config`` adds Ray's other keys (``upscale_delay_s``, ...). An int fixes the
    count. ``max_ongoing_requests`` (default ``2 * parallel``): requests Ray sends one replica at
    once: its slots plus as many queued inside it, so that a freed slot is refilled at once; the
    rest wait in Ray's router for any replica. A request with ``n`` choices counts once here but
    takes ``n`` slots. ``drain_timeout``: seconds a stopping replica's requests get
    (``graceful_shutdown_timeout_s``). ``name``: the deployment's name.

    Raises:
        InvalidArgument: a bad argument, named. NotImplementedFeature: Ray Serve not installed.
    """
    engine, options = deployment_plan(**locals())  # the arguments above, nothing else
    return deployment().options(**options).bind(engine)


def deployment_plan(model=None, **kw) -> tuple[EngineSettings, dict[str, Any]]:
    """Validates :func:`metallic_app`'s arguments (its defaults for those not given) into the
    replica's settings and the ``Deployment.options`` keywords. Needs no Ray."""
    w = "[metallic_app]"
    params = inspect.signature(metallic_app).parameters
    for key in kw:
        if key not in params:
            raise InvalidArgument(f"{w} {key}: expected one of {', '.join(params)}, got unknown")
    kw = {k: p.default for k, p in params.items() if k != "model"} | kw
    parallel = _int(w, "parallel", kw["parallel"], 1, 256)
    actor = _actor_options(w, kw["ray_actor_options"])
    threads = kw["threads"]
    if threads is None:
        threads = max(1, math.floor(actor.get("num_cpus", 1)))
    else:
        threads = _int(w, "threads", threads, 1, 1024)
        if "num_cpus" in actor:
            raise InvalidArgument(
                f"{w} ray_actor_options: expected no 'num_cpus' when threads is given (it is "
                f"threads), got {actor['num_cpus']!r}"
            )
    engine = EngineSettings(
        model=_model_path(w, model),
        parallel=parallel,
        threads=threads,
        context_length=_int(w, "context_length", kw["context_length"], 16, 1 << 22),
        batch_size=_int(w, "batch_size", kw["batch_size"], 1, 8192),
        kv_cache_dtype=_choice(w, "kv_cache_dtype", kw["kv_cache_dtype"], _KV_DTYPES),
        device=_choice(w, "device", kw["device"], DEVICES),
        max_queue=_int(w, "max_queue", kw["max_queue"], 0, 1 << 20),
        model_id=_opt_str(w, "model_id", kw["model_id"]),
        api_key=_opt_str(w, "api_key", kw["api_key"]),
        cors_origins=_origins(w, kw["cors_origins"]),
        draft=_draft(w, kw["draft"]),
        num_draft_tokens=_int(w, "num_draft_tokens", kw["num_draft_tokens"], 1, 32),
        stream_interval_ms=_in_range(w, "stream_interval_ms", kw["stream_interval_ms"], 0, 1000),
    )
    actor.update(num_cpus=actor.get("num_cpus", threads))
    res = _resources(w, kw["resources"])
    if res:
        actor["resources"] = res
    max_ongoing = _opt_int(w, "max_ongoing_requests", kw["max_ongoing_requests"], 2 * parallel)
    options: dict[str, Any] = {
        "name": _name(w, kw["name"]),
        "ray_actor_options": actor,
        "max_ongoing_requests": max_ongoing,
        "graceful_shutdown_timeout_s": _positive(w, "drain_timeout", kw["drain_timeout"]),
    }
    options.update(_scaling(w, kw, parallel, max_ongoing))
    return engine, options


def _scaling(w: str, kw: dict, parallel: int, max_ongoing: int) -> dict[str, Any]:
    n = kw["num_replicas"]
    auto_only = ("min_replicas", "max_replicas", "target_ongoing_requests", "autoscaling_config")
    if n != "auto":
        n = _int(w, "num_replicas", n, 1, 1 << 20, also="'auto' or ")
        for key in auto_only:
            if kw[key] is not None:
                raise InvalidArgument(
                    f"{w} {key}: expected None with a fixed num_replicas ({n}), got {kw[key]!r}"
                )
        return {"num_replicas": n}
    lo = _opt_int(w, "min_replicas", kw["min_replicas"], 1, lo=0)
    hi = _opt_int(w, "max_replicas", kw["max_replicas"], 4)
    if hi < lo:
        raise InvalidArgument(f"{w} max_replicas: expected at least min_replicas ({lo}), got {hi}")
    target = kw["target_ongoing_requests"]
    target = parallel if target is None else _positive(w, "target_ongoing_requests", target)
    if target > max_ongoing:
        raise InvalidArgument(
            f"{w} target_ongoing_requests: expected at most max_ongoing_requests ({max_ongoing}), "
            f"got {target!r}"
        )
    extra = kw["autoscaling_config"] or {}
    if not isinstance(extra, Mapping) or any(k in auto_only for k in extra):
        raise InvalidArgument(
            f"{w} autoscaling_config: expected a dict of Ray's other keys (upscale_delay_s, ...; "
            f"{', '.join(auto_only[:3])} are arguments of their own), got {extra!r}"
        )
    config = {"min_replicas": lo, "max_replicas": hi, "target_ongoing_requests": target}
    return {"autoscaling_config": {**config, **extra}}


# ----------------------------------------------------------------------------- validators


def _int(w: str, name: str, v: object, lo: int, hi: int, also: str = "") -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise InvalidArgument(f"{w} {name}: expected {also}an int in [{lo}, {hi}], got {v!r}")
    return v


def _opt_int(w: str, name: str, v: object, default: int, lo: int = 1) -> int:
    return default if v is None else _int(w, name, v, lo, 1 << 20)


def _in_range(w: str, name: str, v: object, lo: float, hi: float) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi  # not nan
    if not ok:
        raise InvalidArgument(f"{w} {name}: expected a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _positive(w: str, name: str, v: object) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    if not ok:
        raise InvalidArgument(f"{w} {name}: expected a finite number > 0, got {v!r}")
    return v


def _choice(w: str, name: str, v: object, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise InvalidArgument(f"{w} {name}: expected one of {', '.join(choices)}, got {v!r}")
    return v


def _draft(w: str, v: object) -> str | None:
    if v is None or v == "prompt-lookup":
        return v
    if not isinstance(v, (str, os.PathLike)) or not str(v):
        raise InvalidArgument(
            f"{w} draft: expected None, 'prompt-lookup' or a model path or name, got {v!r}"
        )
    return _model_path(w, v)


def _opt_str(w: str, name: str, v: object) -> str | None:
    if v is not None and (not isinstance(v, str) or not v):
        raise InvalidArgument(f"{w} {name}: expected None or a non-empty string, got {v!r}")
    return v


def _name(w: str, v: object) -> str:
    if not isinstance(v, str) or not v or "#" in v:
        raise InvalidArgument(f"{w} name: expected a non-empty string without '#', got {v!r}")
    return v


def _model_path(w: str, model: object) -> str | None:
    if model is None:
        return None
    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise InvalidArgument(
            f"{w} model: expected a path, a registry name or None, got {type(model).__name__}"
        )
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else str(model)


def _origins(w: str, v: object) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, (tuple, list)):
        raise InvalidArgument(f"{w} cors_origins: expected a list of origins, got {v!r}")
    for o in v:
        if not isinstance(o, str) or not o:
            raise InvalidArgument(f"{w} cors_origins: expected non-empty strings, got {o!r}")
    return tuple(v)


def _resources(w: str, v: object) -> dict[str, float]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise InvalidArgument(f"{w} resources: expected a dict like {{'metal': 1}}, got {v!r}")
    out = {}
    for k, n in v.items():
        if not isinstance(k, str) or not k or k in ("CPU", "GPU", "memory"):
            raise InvalidArgument(
                f"{w} resources: expected custom resource names (CPU comes from threads), got {k!r}"
            )
        out[k] = _positive(w, f"resources[{k!r}]", n)
    return out


def _actor_options(w: str, v: object) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
        raise InvalidArgument(f"{w} ray_actor_options: expected a dict, got {v!r}")
    if "resources" in v:
        raise InvalidArgument(
            f"{w} ray_actor_options: expected no 'resources' (pass resources=), "
            f"got {v['resources']!r}"
        )
    out = dict(v)
    if "num_cpus" in out:
        out["num_cpus"] = _positive(w, "ray_actor_options['num_cpus']", out["num_cpus"])
    return out


# ----------------------------------------------------------------------------- serve run / YAML


def app_builder(args: dict[str, Any]):
    """Ray's application builder: ``serve run metallic.server.ray:app_builder model=X k=v``
    (strings) or ``import_path: metallic.server.ray:app_builder`` with ``args:`` in a Serve
    config file (YAML types). See :func:`parse_builder_args`."""
    return metallic_app(**parse_builder_args(args))


def parse_builder_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`metallic_app`'s keywords from ``serve run`` strings or YAML values: numbers from
    strings, ``cors_origins`` comma-separated, the dicts (``resources``, ...) as JSON;
    ``api_key`` defaults to ``$METALLIC_API_KEY``. An unknown key is an InvalidArgument."""
    w = "[app_builder]"
    if not isinstance(args, Mapping):
        raise InvalidArgument(f"{w} args: expected a dict, got {type(args).__name__}")
    known = inspect.signature(metallic_app).parameters
    kw: dict[str, Any] = {}
    for key, value in args.items():
        if key not in known:
            raise InvalidArgument(f"{w} {key}: expected one of {', '.join(known)}, got unknown")
        kw[key] = _parse_arg(w, key, value)
    kw.setdefault("api_key", os.environ.get("METALLIC_API_KEY") or None)
    return kw


_INT_ARGS = {
    "parallel",
    "threads",
    "context_length",
    "batch_size",
    "max_queue",
    "min_replicas",
    "max_replicas",
    "max_ongoing_requests",
    "num_draft_tokens",
}
_FLOAT_ARGS = {"target_ongoing_requests", "drain_timeout", "stream_interval_ms"}
_JSON_ARGS = {"resources", "ray_actor_options", "autoscaling_config"}


def _parse_arg(w: str, key: str, value: Any) -> Any:
    if not isinstance(value, str):  # a YAML value: already typed
        return value
    try:
        if key in _INT_ARGS or (key == "num_replicas" and value != "auto"):
            return int(value)
        if key in _FLOAT_ARGS:
            return float(value)
        if key in _JSON_ARGS:
            return json.loads(value)
    except ValueError as exc:
        kind = "JSON" if key in _JSON_ARGS else "a number"
        raise InvalidArgument(f"{w} {key}: expected {kind}, got {value!r}") from exc
    if key == "cors_origins":
        return [o.strip() for o in value.split(",") if o.strip()]
    return value


__all__ = [
    "EngineSettings",
    "MetallicReplica",
    "app_builder",
    "deployment",
    "deployment_plan",
    "metallic_app",
    "parse_builder_args",
]
