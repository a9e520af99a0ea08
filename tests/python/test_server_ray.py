"""The Ray Serve deployment (src/metallic/server/ray.py).

Argument validation and the deployment options need no Ray. The end-to-end test starts a local
Ray (2 CPUs, a custom ``metal`` resource as a Mac node would advertise), deploys a tiny llama
through :func:`metallic_app` with autoscaling and that resource, and drives Ray's HTTP proxy with
the official ``openai`` SDK: greedy chat and streamed completion must equal a separately loaded
model's ``chat`` / ``generate`` token for token (the kernels are batch invariant), auth and
``/health`` / ``/metrics`` behave as in ``metallic-server``, and after ``serve.delete`` the
replica's log says that it stopped its scheduler and closed its model. A model that does not load
fails the deployment with its typed error in ``serve.status()``; the slow test loads a replica
until the autoscaler starts a second one.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import metallic
from metallic import errors
from metallic.server.ray import EngineSettings, deployment_plan, parse_builder_args

CTX = 96
KEY = "sk-ray-test"
MSG = [{"role": "user", "content": "Say something about the sea."}]
NO_RAY = "Ray Serve is not installed (pip install 'metallic[ray]')"

# ----------------------------------------------------------------------------- without Ray


def test_default_plan_sizes_autoscaling_from_parallel(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    engine, options = deployment_plan(str(model), parallel=3, threads=2, resources={"metal": 1})
    assert engine == EngineSettings(
        model=str(model.resolve()),
        parallel=3,
        threads=2,
        context_length=4096,
        batch_size=256,
        kv_cache_dtype="f16",
        device="auto",
        max_queue=256,
        model_id=None,
        api_key=None,
        cors_origins=(),
    )
    assert options == {
        "name": "metallic",
        "ray_actor_options": {"num_cpus": 2, "resources": {"metal": 1}},
        "max_ongoing_requests": 6,
        "graceful_shutdown_timeout_s": 60,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3},
    }


def test_fixed_replicas_and_actor_options():
    engine, options = deployment_plan(
        "smollm2",  # a registry name stays a name
        num_replicas=2,
        max_ongoing_requests=5,
        ray_actor_options={"num_cpus": 3.5, "runtime_env": {"env_vars": {"A": "1"}}},
    )
    assert engine.model == "smollm2" and engine.threads == 3  # threads follow num_cpus
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options
    assert options["max_ongoing_requests"] == 5
    assert options["ray_actor_options"] == {
        "num_cpus": 3.5,
        "runtime_env": {"env_vars": {"A": "1"}},
    }


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"parallel": 0}, "parallel"),
        ({"parallel": True}, "parallel"),
        ({"threads": 0}, "threads"),
        ({"context_length": 8}, "context_length"),
        ({"kv_cache_dtype": "q8"}, "kv_cache_dtype"),
        ({"device": "cuda"}, "device"),
        ({"api_key": ""}, "api_key"),
        ({"cors_origins": "*"}, "cors_origins"),
        ({"num_replicas": "many"}, "num_replicas"),
        ({"num_replicas": 0}, "num_replicas"),
        ({"num_replicas": 2, "max_replicas": 3}, "max_replicas"),
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests"),
        ({"parallel": 2, "target_ongoing_requests": 5}, "target_ongoing_requests"),
        ({"max_ongoing_requests": 0}, "max_ongoing_requests"),
        ({"resources": ["metal"]}, "resources"),
        ({"resources": {"CPU": 1}}, "resources"),
        ({"resources": {"metal": -1}}, "resources['metal']"),
        ({"ray_actor_options": {"resources": {"metal": 1}}}, "ray_actor_options"),
        ({"threads": 2, "ray_actor_options": {"num_cpus": 4}}, "ray_actor_options"),
        ({"drain_timeout": float("inf")}, "drain_timeout"),
        ({"name": ""}, "name"),
        ({"replicas": 2}, "replicas"),
        ({"draft": 3}, "draft"),
        ({"draft": ""}, "draft"),
        ({"draft": "prompt-lookup", "num_draft_tokens": 0}, "num_draft_tokens"),
        ({"stream_interval_ms": -1}, "stream_interval_ms"),
        ({"stream_interval_ms": float("nan")}, "stream_interval_ms"),
        ({"stream_interval_ms": "16"}, "stream_interval_ms"),
    ],
)
def test_bad_arguments_are_named(kw, name):
    with pytest.raises(
        errors.InvalidArgument, match=rf"^\[metallic_app\] {re.escape(name)}: expected"
    ) as e:
        deployment_plan("m.gguf", **kw)
    assert isinstance(e.value, ValueError)


def test_draft_settings(tmp_path):
    engine, _ = deployment_plan("m.gguf")
    assert (engine.draft, engine.num_draft_tokens) == (None, 6)
    engine, _ = deployment_plan("m.gguf", draft="prompt-lookup", num_draft_tokens=4)
    assert (engine.draft, engine.num_draft_tokens) == ("prompt-lookup", 4)
    small = tmp_path / "small.gguf"
    small.write_bytes(b"")
    assert deployment_plan("m.gguf", draft=small)[0].draft == str(small.resolve())
    kw = parse_builder_args({"draft": "smollm2", "num_draft_tokens": "3"})
    assert kw["draft"] == "smollm2" and kw["num_draft_tokens"] == 3
    assert engine.stream_interval_ms == 16.0
    assert deployment_plan("m.gguf", stream_interval_ms=0)[0].stream_interval_ms == 0.0
    assert parse_builder_args({"stream_interval_ms": "8"})["stream_interval_ms"] == 8.0


def test_bad_model_is_named():
    with pytest.raises(errors.InvalidArgument, match=r"^\[metallic_app\] model: expected"):
        deployment_plan(3)


def test_builder_args_from_serve_run_strings(monkeypatch):
    monkeypatch.setenv("METALLIC_API_KEY", "from-env")
    kw = parse_builder_args(
        {
            "model": "smollm2",
            "parallel": "8",
            "threads": "4",
            "num_replicas": "auto",
            "max_replicas": "3",
            "target_ongoing_requests": "6.5",
            "resources": '{"metal": 1}',
            "cors_origins": "http://a, http://b",
        }
    )
    assert kw == {
        "model": "smollm2",
        "parallel": 8,
        "threads": 4,
        "num_replicas": "auto",
        "max_replicas": 3,
        "target_ongoing_requests": 6.5,
        "resources": {"metal": 1},
        "cors_origins": ["http://a", "http://b"],
        "api_key": "from-env",
    }
    # YAML args arrive typed and pass through; an explicit key wins over the environment
    typed = parse_builder_args({"num_replicas": 2, "api_key": "k", "resources": {"metal": 1}})
    assert typed == {"num_replicas": 2, "api_key": "k", "resources": {"metal": 1}}
    engine, options = deployment_plan(**kw)
    assert engine.api_key == "from-env" and options["autoscaling_config"]["max_replicas"] == 3


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"paralel": "2"}, r"^\[app_builder\] paralel: expected one of model, parallel"),
        ({"parallel": "two"}, r"^\[app_builder\] parallel: expected a number, got 'two'"),
        ({"resources": "{metal: 1}"}, r"^\[app_builder\] resources: expected JSON"),
    ],
)
def test_builder_args_errors(args, match):
    with pytest.raises(errors.InvalidArgument, match=match):
        parse_builder_args(args)


# ----------------------------------------------------------------------------- on a local Ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class LocalRay:
    """Ray on this machine (2 CPUs and one ``metal``, as a Mac node would advertise) with Serve's
    HTTP proxy on a free port; its logs under a temp dir of its own."""

    def __init__(self):
        self.ray = pytest.importorskip("ray", reason=NO_RAY)
        self.serve = pytest.importorskip("ray.serve", reason=NO_RAY)
        # Ray's temp dir holds its unix sockets (paths of at most 107 bytes): a short one.
        self.tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.ray.init(
            num_cpus=2,
            resources={"metal": 1},
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=self.tmp,
        )
        self.serve.start(http_options={"host": "127.0.0.1", "port": port})

    def replica_log(self) -> str:
        pattern = os.path.join(self.tmp, "session_*", "logs", "serve", "replica_*.log")
        return "".join(Path(p).read_text("utf-8", errors="replace") for p in glob.glob(pattern))

    def close(self) -> None:
        self.serve.shutdown()
        self.ray.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray():
    cluster = LocalRay()
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    tiny_models = pytest.importorskip("tiny_models")
    return tiny_models.make_model(tmp_path_factory.mktemp("ray"), "llama", "q8_0", "gguf").path


def test_ray_serve_end_to_end(local_ray, tiny_path):
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from metallic.server.ray import metallic_app

    app = metallic_app(
        tiny_path,
        parallel=2,
        threads=1,
        context_length=CTX,
        max_replicas=1,
        resources={"metal": 1},
        model_id="tiny",
        api_key=KEY,
    )
    url = local_ray.url
    local_ray.serve.run(app, name="e2e", route_prefix="/")
    try:
        assert _get(url + "/health") == (200, b'{"status":"ok"}')
        status, body = _get(url + "/v1/models")  # the key is required, as in metallic-server
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        status, body = _get(url + "/metrics", KEY)
        assert status == 200 and b"metallic:requests_running" in body

        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        chat = client.chat.completions.create(
            model="tiny", messages=MSG, max_tokens=12, temperature=0
        )
        prompt = "The sea is"
        streamed = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=8, temperature=0, stream=True
        )
        text = "".join(ch.choices[0].text for ch in streamed if ch.choices)
        with metallic.load(tiny_path, device="cpu", threads=1, context_length=CTX) as ref:
            want_chat = ref.chat(MSG, max_tokens=12)
            ref.reset_cache()
            want_text = ref.generate(prompt, max_tokens=8)
        assert chat.choices[0].message.content == want_chat and want_chat
        assert text == want_text and want_text
    finally:
        local_ray.serve.delete("e2e")  # stops the replica: Ray calls its __del__
    log = local_ray.replica_log()
    assert "metallic replica: tiny on cpu, 2 slots of 96 tokens, threads: 1" in log
    assert "metallic replica: scheduler stopped, model closed" in log


def test_a_model_that_does_not_load_fails_the_deployment(local_ray, tmp_path):
    from metallic.server.ray import metallic_app

    missing = tmp_path / "missing.gguf"
    app = metallic_app(str(missing), threads=1, context_length=CTX, num_replicas=1)
    with pytest.raises(RuntimeError, match="Deploying application bad failed"):
        local_ray.serve.run(app, name="bad", route_prefix="/bad")
    try:
        message = local_ray.serve.status().applications["bad"].deployments["metallic"].message
        assert f"metallic.errors.FileNotFound: [open_model] {missing}: no such file" in message
    finally:
        local_ray.serve.delete("bad")


@pytest.mark.slow
def test_autoscales_on_ongoing_requests(local_ray, tiny_path):
    from metallic.server.ray import metallic_app

    app = metallic_app(
        tiny_path,
        parallel=1,  # target_ongoing_requests 1: a second request in flight asks for a replica
        threads=1,
        context_length=CTX,
        max_replicas=2,
        autoscaling_config={"upscale_delay_s": 1},
    )
    local_ray.serve.run(app, name="scale", route_prefix="/scale")
    body = json.dumps({"prompt": "The sea is", "max_tokens": 64, "temperature": 0}).encode()
    done = threading.Event()

    def load() -> None:
        req = urllib.request.Request(
            local_ray.url + "/scale/v1/completions", body, {"Content-Type": "application/json"}
        )
        while not done.is_set():
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 200

    workers = [threading.Thread(target=load, daemon=True) for _ in range(6)]
    try:
        for t in workers:
            t.start()
        deadline = time.monotonic() + 60
        running = 0
        while running < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            status = local_ray.serve.status().applications["scale"]
            running = status.deployments["metallic"].replica_states.get("RUNNING", 0)
        assert running == 2
    finally:
        done.set()
        for t in workers:
            t.join(30)
        local_ray.serve.delete("scale")
