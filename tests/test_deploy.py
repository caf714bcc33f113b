"""The deployment files (docker/, .dockerignore, docs/cluster.md) checked as far as this machine can:
linted by hadolint, yamllint and the Compose specification's schema, each linter first shown to reject
a known-bad input; the images' entry points and health checks run for real against the project's own
commands; every variable of the compose file documented, set in .env.example and used.

Building and running the images needs a Docker engine, which CI does not have; the Ray node entry point
(docker/ray-node.sh) runs for real in tests/test_cluster.py.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from typer.testing import CliRunner

from nas_service.cli import app

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILES = {"api": DOCKER / "Dockerfile.api", "worker": DOCKER / "Dockerfile.worker"}
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
VARIABLES_DOC = DOCKER / "README.md"
CLUSTER_DOC = REPO / "docs" / "cluster.md"
NODE_SCRIPT = DOCKER / "ray-node.sh"
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
YAMLLINT_CONFIG = "{extends: default, rules: {line-length: {max: 120}}}"
WORKDIR = "/srv/nas"


# -- helpers -------------------------------------------------------------------------------------------


def instructions(path: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), one list per build stage."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comments inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword.upper(), arguments.strip()))
        # ARGs before the first FROM are global; they are read with global_args()
    return stages


def global_args(path: Path) -> dict[str, str]:
    text = path.read_text().split("\nFROM ", 1)[0]
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))


def stage_args(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(arguments.split("=", 1) for keyword, arguments in stage if keyword == "ARG" and "=" in arguments)


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for kw, arguments in stage if kw == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]


def healthcheck_command(arguments: str) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK [--option=value ...] CMD <exec form> -> (options, argv)."""
    options_text, _, command = arguments.partition("CMD ")
    options = dict(option.lstrip("-").split("=", 1) for option in options_text.split())
    return options, json.loads(command)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ${V}, ${V:-default}, ${V-default}, ${V:?error}, ${V?error},
    nested in defaults, and $$ for a literal $. A missing required variable raises ValueError."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, end = 1, i + 2
            while depth:
                if end >= len(text):
                    raise ValueError(f"unterminated ${{ in {text!r}")
                if text.startswith("${", end):
                    depth, end = depth + 1, end + 2
                    continue
                depth -= text[end] == "}"
                end += 1
            match = re.fullmatch(r"([A-Za-z_]\w*)(?:(:?[-?])(.*))?", text[i + 2 : end - 1], re.S)
            if match is None:
                raise ValueError(f"invalid interpolation {text[i:end]!r}")
            name, operator, argument = match.groups()
            value = env.get(name)
            present = bool(value) if operator and operator.startswith(":") else value is not None
            if operator in (":-", "-"):
                out.append(value if present else interpolate(argument, env))
            elif operator in (":?", "?"):
                if not present:
                    raise ValueError(f"required variable {name} is missing: {argument}")
                out.append(value)
            else:
                out.append(value or "")
            i = end
        elif text[i] == "$" and re.match(r"[A-Za-z_]", text[i + 1 : i + 2]):
            name = re.match(r"[A-Za-z_]\w*", text[i + 1 :]).group()
            out.append(env.get(name, ""))
            i += 1 + len(name)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def interpolate_tree(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def compose_variables(text: str) -> set[str]:
    """The variables a compose file reads from its environment ($$ escapes are the container's own)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_]\w*)", text))


def env_example() -> tuple[dict[str, str], set[str]]:
    """(.env.example's set variables, every variable it lists, commented out or not)."""
    values, listed = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            listed.add(match.group(2))
            if not match.group(1):
                values[match.group(2)] = match.group(3)
    return values, listed


def compose(env: dict[str, str] | None = None) -> dict:
    """The compose file as Docker Compose sees it with .env.example (YAML merge keys resolved)."""
    values, _ = env_example()
    return interpolate_tree(yaml.safe_load(COMPOSE.read_text()), values if env is None else env)


def requirement(name: str) -> Requirement:
    return next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == name)


# -- linters, each shown to fail first ------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "hadolint", "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_rejects_a_bad_dockerfile_and_passes_ours(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update\nRUN apt-get install curl\nCMD python -m http.server\n")
    linted = hadolint(bad)
    assert linted.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015", "DL3025"):  # :latest, unpinned, no --no-install-recommends, shell CMD
        assert rule in linted.stdout, linted.stdout
    for path in DOCKERFILES.values():
        linted = hadolint(path)
        assert linted.returncode == 0 and linted.stdout == "", f"{path.name}:\n{linted.stdout}{linted.stderr}"


def yamllint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "yamllint", "--strict", "-f", "parsable", "-d", YAMLLINT_CONFIG, str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_yamllint_rejects_bad_yaml_and_passes_the_compose_file(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text("---\nservices:\n  api:\n    environment:\n      TOKEN: ${T:?set T: it is required}\n")
    linted = yamllint(bad)
    assert linted.returncode != 0 and "syntax error" in linted.stdout, linted.stdout
    linted = yamllint(COMPOSE)
    assert linted.returncode == 0, linted.stdout


def compose_schema_check(path: Path) -> subprocess.CompletedProcess:
    if shutil.which("check-jsonschema", path=str(BIN)) is None:
        pytest.fail("check-jsonschema is not installed: add check-jsonschema to the test extra of pyproject.toml")
    return subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_compose_file_follows_the_compose_specification(tmp_path):
    """Validated after interpolation with .env.example, as `docker compose config` would see it."""
    resolved = compose()
    bad = json.loads(json.dumps(resolved))
    bad["services"]["api"]["healtcheck"] = bad["services"]["api"].pop("ports")  # a misspelt key
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    checked = compose_schema_check(tmp_path / "bad.yaml")
    assert checked.returncode != 0 and "healtcheck" in checked.stdout + checked.stderr, checked.stdout
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(resolved))
    checked = compose_schema_check(tmp_path / "compose.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_node_script_is_valid_shell_and_refuses_unknown_roles():
    assert subprocess.run(["sh", "-n", str(NODE_SCRIPT)], capture_output=True).returncode == 0
    refused = subprocess.run(["sh", str(NODE_SCRIPT), "nonsense"], capture_output=True, text=True)
    assert refused.returncode == 2 and "usage: ray-node.sh head|worker|health" in refused.stderr
    assert os.access(NODE_SCRIPT, os.X_OK), "the images run it directly: it must be executable"


# -- compose file: variables and services --------------------------------------------------------------


def test_compose_interpolation_needs_the_secrets_and_resolves_with_the_example_env():
    values, _ = env_example()
    for secret in ("POSTGRES_PASSWORD", "NAS_API_TOKEN"):
        with pytest.raises(ValueError, match=f"required variable {secret} is missing"):
            compose({k: v for k, v in values.items() if k != secret})
    resolved = compose()
    # Only the $${...} escapes are left, for the container's shell (the postgres health check).
    assert json.dumps(resolved).count("${") == COMPOSE.read_text().count("$${") == 2  # POSTGRES_USER, POSTGRES_DB
    api = resolved["services"]["api"]["environment"]
    assert api["NAS_DB_URL"] == f"postgresql+psycopg://nas:{values['POSTGRES_PASSWORD']}@postgres:5432/nas"
    assert resolved["services"]["ray-head"]["environment"]["NAS_DB_URL"] == api["NAS_DB_URL"]
    external = "postgresql+psycopg://u:p@db.example:5432/x"
    assert compose({**values, "NAS_DB_URL": external})["services"]["api"]["environment"]["NAS_DB_URL"] == external


def test_every_variable_is_documented_listed_and_used():
    raw = COMPOSE.read_text()
    variables = compose_variables(raw)
    values, listed = env_example()
    assert variables == listed, (
        f"in compose.yaml only: {sorted(variables - listed)}; in .env.example only: {sorted(listed - variables)}"
    )
    required = set(re.findall(r"(?<!\$)\$\{([A-Za-z_]\w*):?\?", raw))
    assert required and required <= set(values), f"required but not set in .env.example: {required - set(values)}"

    # What the containers read: the nas commands' NAS_* variables and docker/ray-node.sh's RAY_* ones.
    script_variables = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", NODE_SCRIPT.read_text()))
    container_variables = {
        name for service in compose()["services"].values() for name in service.get("environment", {})
    }
    source = "\n".join(path.read_text() for path in (REPO / "nas_service").rglob("*.py"))
    for name in container_variables:
        if name.startswith("NAS_"):
            assert f'"{name}"' in source, f"{name} is given to a container but nas_service never reads it"
        elif name.startswith("RAY_"):
            assert name in script_variables, f"{name} is given to a container but ray-node.sh never reads it"
    documented = VARIABLES_DOC.read_text()
    for name in variables | script_variables | container_variables | {"RAY_ADDRESS"}:
        assert re.search(rf"\|\s*`{name}`\s*\|", documented), f"{name} has no row in docker/README.md's tables"


def test_services_volumes_and_health_checks():
    resolved = compose()
    services = resolved["services"]
    assert set(services) == {"postgres", "ray-head", "ray-worker", "api"}
    assert set(resolved["volumes"]) == {"pgdata", "nas-data"}
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in ("ray-head", "ray-worker", "api"):
        # Search configs resolve dataset paths against the working directory: the same path everywhere.
        assert f"nas-data:{WORKDIR}/data" in services[name]["volumes"], name
        assert services[name]["depends_on"], name
    image_health = {"api": DOCKERFILES["api"], "ray-worker": DOCKERFILES["worker"]}
    for name, service in services.items():
        own = service.get("healthcheck", {}).get("test")
        assert own or (name in image_health and "HEALTHCHECK" in dict(instructions(image_health[name])[-1])), (
            f"{name} has no health check"
        )
        assert service.get("restart") == "unless-stopped", name
    assert "healthcheck" not in services["api"]  # the image's: GET /api/health, run for real below
    assert services["ray-head"]["healthcheck"]["test"] == ["CMD", "ray-node.sh", "health"]
    assert services["ray-worker"]["healthcheck"]["test"] == ["CMD", "ray-node.sh", "health"]
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    gpus = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert services["ray-worker"]["environment"]["RAY_HEAD_ADDRESS"] == "ray-head:6379"
    assert services["api"]["environment"]["NAS_RAY_ADDRESS"] == "http://ray-head:8265"
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]  # loopback unless NAS_API_PUBLISH says otherwise
    # The API's NAS_RAY_ADDRESS is the head's job server; the head publishes it and runs the dashboard there.
    assert services["ray-head"]["ports"] == ["127.0.0.1:8265:8265"]
    for name, dockerfile in (("ray-head", "docker/Dockerfile.api"), ("api", "docker/Dockerfile.api"),
                             ("ray-worker", "docker/Dockerfile.worker")):
        build = services[name]["build"]
        assert (build["context"], build["dockerfile"]) == ("..", dockerfile)
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve().is_file()


def test_compose_commands_are_the_images_entry_points():
    """Each service's effective command: the compose override, else the image's ENTRYPOINT + CMD."""
    services = compose()["services"]
    api_stage = instructions(DOCKERFILES["api"])[-1]
    worker_stage = instructions(DOCKERFILES["worker"])[-1]
    api_default = json.loads(last(api_stage, "ENTRYPOINT")) + json.loads(last(api_stage, "CMD"))
    worker_default = json.loads(last(worker_stage, "ENTRYPOINT")) + json.loads(last(worker_stage, "CMD"))
    assert "entrypoint" not in services["api"] and "command" not in services["api"]
    assert api_default[:2] == ["nas", "serve"]
    head = services["ray-head"]["entrypoint"] + services["ray-head"]["command"]
    assert head == ["ray-node.sh", "head"]  # run by tests/test_cluster.py
    assert "entrypoint" not in services["ray-worker"] and "command" not in services["ray-worker"]
    assert worker_default == ["ray-node.sh", "worker"]  # run by tests/test_cluster.py
    # The API's options exist: the same argv through the real CLI (with --help appended).
    result = CliRunner().invoke(app, [*api_default[1:], "--help"])
    assert result.exit_code == 0, result.output
    for option in (a for a in api_default if a.startswith("--")):
        assert option in result.output, f"nas serve has no {option}"


# -- Dockerfiles ---------------------------------------------------------------------------------------


def test_dockerfiles_agree_with_each_other_and_with_pyproject():
    torch, torchvision, ray = requirement("torch"), requirement("torchvision"), requirement("ray")
    python_versions = set()
    for name, path in DOCKERFILES.items():
        text = path.read_text()
        stages = instructions(path)
        assert len(stages) >= 2, f"{name}: multi-stage (build, runtime)"
        for wanted in (torch, torchvision):
            found = {SpecifierSet(spec) for spec in re.findall(rf'"{wanted.name}([<>=!~][^"]*)"', text)}
            assert found == {wanted.specifier}, f"{name}: {wanted.name} {found} differs from pyproject's {wanted.specifier}"
        image = global_args(path)["PYTHON_IMAGE"]
        python_versions.add(image)
        minor = re.match(r"python:(\d+\.\d+)", image).group(1)
        assert Version(minor) in requirement_python(), f"{name}: {image} is not {requirement_python()}"
        ray_versions = {stage_args(stage).get("RAY_VERSION") for stage in stages}
        assert len(ray_versions) == 1, f"{name}: stages disagree on RAY_VERSION {ray_versions}"
        ray_version = ray_versions.pop()
        assert ray.specifier.contains(ray_version), f"{name}: ray {ray_version} outside {ray.specifier}"
        assert f'"ray[default,tune]==${{RAY_VERSION}}"' in text
        final = stages[-1]
        user = last(final, "USER")
        assert user.split(":")[0] not in ("root", "0"), f"{name}: runs as root"
        assert last(final, "WORKDIR") == WORKDIR
        assert any(kw == "COPY" and args.startswith("--from=build") for kw, args in final), f"{name}: not multi-stage"
        assert not any(kw == "COPY" and " . " in f" {args} " for kw, args in stages[0]), "copy what is needed, not ."
    assert len(python_versions) == 1, f"Ray needs one Python on every node: {python_versions}"
    # The same Ray everywhere: Dockerfiles, compose default and .env.example.
    api_ray = stage_args(instructions(DOCKERFILES["api"])[0])["RAY_VERSION"]
    assert f"RAY_VERSION:-{api_ray}" in COMPOSE.read_text()
    assert f"# RAY_VERSION={api_ray}" in ENV_EXAMPLE.read_text()
    assert "download.pytorch.org/whl/cpu" in DOCKERFILES["api"].read_text()
    assert re.search(r"download\.pytorch\.org/whl/cu\d+", DOCKERFILES["worker"].read_text())


def requirement_python() -> SpecifierSet:
    return SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_images_copy_every_package_and_the_build_context_keeps_them():
    packages = {pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for name, path in DOCKERFILES.items():
        sources = []
        for keyword, arguments in (item for stage in instructions(path) for item in stage):
            if keyword == "COPY" and not arguments.startswith("--from"):
                parts = [p for p in shlex.split(arguments) if not p.startswith("--")]
                sources += parts[:-1]
        copied = {Path(source).parts[0] for source in sources}
        assert packages <= copied, f"{name} does not copy {packages - copied}"
        for source in sources:
            assert (REPO / source).exists(), f"{name}: COPY {source} does not exist"
            top = Path(source).parts[0]
            assert top not in ignored and source not in ignored, f"{name}: COPY {source} is in .dockerignore"
    assert ".venv" in ignored and ".git" in ignored and "data" in ignored


# -- the API image's entry point and health check, run for real ----------------------------------------


def test_api_entry_point_serves_and_its_health_check_tells_up_from_down(tmp_path):
    stage = instructions(DOCKERFILES["api"])[-1]
    argv = json.loads(last(stage, "ENTRYPOINT")) + json.loads(last(stage, "CMD"))
    options, health = healthcheck_command(last(stage, "HEALTHCHECK"))
    container_port = argv[argv.index("--port") + 1]
    assert last(stage, "EXPOSE") == container_port and f":{container_port}/api/health" in health[-1]
    timeout = float(options["timeout"].rstrip("s"))
    # The same commands on this machine: loopback and a free port instead of the container's 0.0.0.0:8000.
    port = str(free_port())
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = port
    health = [*health[:-1], health[-1].replace(f":{container_port}/", f":{port}/")]
    env = {**os.environ, "NAS_DB_URL": f"sqlite:///{tmp_path / 'nas.db'}", "NAS_API_TOKEN": "secret"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    server = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while (check := subprocess.run(health, env=env, capture_output=True, timeout=timeout)).returncode != 0:
            assert server.poll() is None, server.stdout.read().decode()
            assert time.monotonic() < deadline, check.stderr.decode()
            time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    down = subprocess.run(health, env=env, capture_output=True, timeout=timeout)
    assert down.returncode != 0 and b"Connection refused" in down.stderr


# -- docs: every command they show is a real command with real options ----------------------------------


def shell_blocks(text: str) -> list[str]:
    """The contents of the ```bash / ```sh fenced blocks of a Markdown text."""
    blocks, current = [], None
    for line in text.splitlines():
        fence = re.match(r"\s*```(\w*)", line)
        if fence and current is None:
            current = [] if fence.group(1) in ("bash", "sh", "console") else False
        elif fence:
            if current is not False:
                blocks.append("\n".join(current))
            current = None
        elif current:
            current.append(line)
        elif current == []:
            current.append(line)
    return blocks


def nas_invocations(markdown: str) -> list[list[str]]:
    """Every `nas <word> ...` in the shell blocks of a Markdown text, as argv after `nas`."""
    commands = []
    for block in shell_blocks(markdown):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            line = re.sub(r"--entrypoint nas \S+", "nas", line)  # `docker run ... --entrypoint nas IMAGE args`
            for match in re.finditer(r"(?:^|\s)nas\s+([a-z][\w-]*\b.*)$", line):
                commands.append(shlex.split(match.group(1).replace("$", "")))
    return commands


def documented_nas_commands() -> list[list[str]]:
    """Every `nas` command in the shell blocks of the deployment docs."""
    return [argv for path in (CLUSTER_DOC, VARIABLES_DOC) for argv in nas_invocations(path.read_text())]


def cli_problem(argv: list[str]) -> str | None:
    """Why `nas argv` is not a command of the CLI taking these options; None when it is.

    The words before the first option must name a command through every group level (a misspelt
    subcommand is refused, not read as an argument of its group); every --option must be one of the
    named command's own.
    """
    command, named = typer.main.get_command(app), "nas"
    for word in argv:  # a group is what has subcommands (typer ships its own copy of click)
        if not hasattr(command, "commands") or word.startswith("-"):
            break
        if word not in command.commands:
            return f"`{named} {word}`: no such command ({named} has: {', '.join(sorted(command.commands))})"
        command, named = command.commands[word], f"{named} {word}"
    if hasattr(command, "commands") and not command.invoke_without_command:
        return f"`{named}` names a group, not a command"
    options = {"--help"} | {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
    unknown = [a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0] not in options]
    return f"`nas {' '.join(argv)}`: {named} has no option {unknown[0]}" if unknown else None


def test_documented_nas_commands_exist_with_their_options():
    commands = documented_nas_commands()
    # docs/cluster.md walks through measuring the proxy and starting, watching, stopping and resuming a search.
    named = {" ".join(argv[:2]) for argv in commands}
    assert {"search start", "search list", "search show", "search stop", "search resume"} <= named, commands
    assert "proxy" in {argv[0] for argv in commands}, commands
    assert [problem for problem in map(cli_problem, commands) if problem] == []


def test_the_documented_command_check_refuses_misspellings():
    found = nas_invocations("```bash\nnas search resmue 1 --force\nnas serch list  # top level\n```\n")
    assert found == [["search", "resmue", "1", "--force"], ["serch", "list"]]
    assert cli_problem(found[0]).startswith("`nas search resmue`: no such command (nas search has: ")
    assert cli_problem(found[1]).startswith("`nas serch`: no such command (nas has: ")
    unknown_option = cli_problem(["search", "list", "--dbb", "x"])
    assert unknown_option == "`nas search list --dbb x`: nas search list has no option --dbb"
    assert cli_problem(["search"]) == "`nas search` names a group, not a command"
    assert cli_problem(["search", "stop", "1", "--db", "x"]) is None
