"""The container image, as far as it can be checked without a Docker engine.

- The Dockerfile itself: multi-stage, a slim Python base pinned to a patch release, a
  numeric non-root USER, ``ENTRYPOINT ["runlog-relay"]``, OCI labels, dependencies from
  the lock with binary wheels only and no pip cache, and ``.dockerignore`` letting in only
  what the Dockerfile copies.
- The lock covers pyproject.toml's runtime and ``operator`` requirements.
- The builder's install steps, taken from the Dockerfile's RUN lines (paths under /opt
  mapped into a temporary folder, and pip's cache allowed so reruns are quick), run in a
  fresh venv from a copy of the build context; the resulting venv runs ``runlog-relay
  --version``, ``sidecar --help``, ``operator --help`` and ``crd``, imports everything the
  sidecar and the operator run, has no pip left, and writes nothing into itself when run
  with the image's environment (the image's root filesystem is read-only).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from runlog_relay import __version__
from runlog_relay.config.crd import crd_yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "requirements" / "runtime.lock"

pytestmark = pytest.mark.integration


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, by name ("final" for the last, unnamed one)."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for instruction, args in instructions(text):
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else "final"
            assert name not in found, f"two stages named {name}"
            current = found[name] = []
        if current is not None:
            current.append((instruction, args))
    return found


def _dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_the_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    text = _dockerfile()
    all_instructions = instructions(text)
    base = next(a for i, a in all_instructions if i == "ARG" and a.startswith("PYTHON_IMAGE="))
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), image
    found = stages(text)
    assert list(found) == ["builder", "final"]
    builder, final = found["builder"], found["final"]
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")

    final_dict: dict[str, list[str]] = {}
    for instruction, args in final:
        final_dict.setdefault(instruction, []).append(args)
    (user,) = final_dict["USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), user
    assert json.loads(final_dict["ENTRYPOINT"][-1]) == ["runlog-relay"]
    assert json.loads(final_dict["CMD"][-1]) == ["sidecar"]
    env = " ".join(final_dict["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "/opt/runlog-relay/bin" in env
    # The final stage takes only the venv from the builder: no sources, wheels or caches.
    copies = final_dict["COPY"]
    assert copies == ["--from=builder /opt/runlog-relay /opt/runlog-relay"]
    labels = " ".join(final_dict["LABEL"])
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_pip_runs_without_a_cache_from_the_lock_with_binary_wheels_only() -> None:
    runs = [args for instruction, args in instructions(_dockerfile()) if instruction == "RUN"]
    pip_calls = [
        part.strip()
        for run in runs
        for part in run.split("&&")
        if re.search(r"\bpip (install|wheel)\b", part)
    ]
    assert pip_calls
    for call in pip_calls:
        assert "--no-cache-dir" in call, call
        if "--requirement" in call:
            assert "--no-deps" in call and "--only-binary=:all:" in call, call
    locks = {
        re.search(r"--requirement (\S+)", c).group(1) for c in pip_calls if "--requirement" in c
    }  # type: ignore[union-attr]
    assert locks == {"requirements/build.lock", "requirements/runtime.lock"}
    assert any("pip check" in run for run in runs)


def test_dockerignore_lets_in_only_what_the_dockerfile_copies() -> None:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert "*" in lines  # everything out, then only what is needed back in
    copied = set()
    for instruction, args in instructions(_dockerfile()):
        if instruction == "COPY" and not args.startswith("--from"):
            *sources, _destination = args.split()
            copied.update(source.rstrip("/") for source in sources)
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert copied == allowed


def test_the_lock_pins_every_runtime_requirement() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["operator"]]
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{requirement} is not in {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name]}, outside {requirement}"
        )
    assert "runlog-relay" not in pins  # the project itself comes from its wheel


# --------------------------------------------------------------------------- the install


#: The only commands the builder's RUN lines may contain for this test to run them: a venv
#: made by the base image's Python, or pip of one of the two venvs. Anything else (an
#: `rm`, a command of the final stage) fails the test before anything runs.
_ALLOWED_STEP = re.compile(
    r"python -m venv /opt/(build|runlog-relay)"
    r"|/opt/(build|runlog-relay)/bin/pip (install|wheel|check|uninstall) [^;|&<>$`]*"
    r"|/opt/(build|runlog-relay)/bin/pip check"
)


def builder_steps(tmp: Path) -> list[list[str]]:
    """The builder stage's RUN lines as argument vectors for this machine, to run without
    a shell: /opt/... mapped under ``tmp``, pip's cache allowed (the image must not keep
    one; a test may reuse it). Globs stay; :func:`_globbed` expands them when run."""
    steps = []
    for instruction, args in stages(_dockerfile())["builder"]:
        if instruction != "RUN":
            continue
        for part in args.split("&&"):
            part = part.strip()
            assert _ALLOWED_STEP.fullmatch(part), f"the test will not run {part!r}"
            argv = []
            for word in shlex.split(part):
                word = word.replace("/opt/build", str(tmp / "build"))
                word = word.replace("/opt/runlog-relay", str(tmp / "venv"))
                if word == "--no-cache-dir":
                    continue
                argv.append(word)
            if argv[0] == "python":
                argv[0] = _base_python()
            for word in argv:
                assert not word.startswith("/") or word.startswith(str(tmp)) or word == argv[0], (
                    f"{word} is outside the test's folder"
                )
            steps.append(argv)
    return steps


def _globbed(argv: list[str], context: Path) -> list[str]:
    expanded = []
    for word in argv:
        if "*" in word:
            matches = sorted(context.glob(word))
            assert len(matches) == 1, (word, matches)
            word = str(matches[0])
        expanded.append(word)
    return expanded


def _base_python() -> str:
    """The interpreter the venvs are made from (the image's is the base image's)."""
    return str(Path(sys.executable).resolve())


def _copy_context(context: Path) -> None:
    """What the builder COPYs from the build context, as the Dockerfile says."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for instruction, args in stages(_dockerfile())["builder"]:
        if instruction != "COPY" or args.startswith("--"):
            continue
        *sources, destination = args.split()
        for source in sources:
            origin = REPO / source.rstrip("/")
            target = context / (destination if destination not in ("./", ".") else "")
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    target if source.endswith("/") else target / origin.name,
                    ignore=ignore,
                    dirs_exist_ok=True,
                )
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)


def _image_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RUNLOG_RELAY_", "AWS_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2"})
    return env


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_builders_install_steps_yield_a_working_runlog_relay(tmp_path: Path) -> None:
    context = tmp_path / "src"
    context.mkdir()
    _copy_context(context)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    steps = builder_steps(tmp_path)
    assert len(steps) >= 5
    for argv in steps:
        result = subprocess.run(
            _globbed(argv, context),
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, f"$ {shlex.join(argv)}\n{result.stdout}\n{result.stderr}"

    venv = tmp_path / "venv"
    runlog_relay = venv / "bin" / "runlog-relay"
    assert runlog_relay.exists()
    assert not (venv / "bin" / "pip").exists(), "pip stays behind in the image's venv"
    before = _files(venv)

    def run(*args: str) -> str:
        result = subprocess.run(
            args, cwd=tmp_path, env=_image_env(), capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result.stdout

    assert run(str(runlog_relay), "--version").strip() == f"runlog-relay {__version__}"
    assert "--source" in run(str(runlog_relay), "sidecar", "--help")
    operator_help = run(str(runlog_relay), "operator", "--help")
    assert "--all-namespaces" in operator_help and "--liveness-port" in operator_help
    assert run(str(runlog_relay), "crd") == crd_yaml()
    # Everything the two long-running commands import at run time, not only --help.
    run(
        str(venv / "bin" / "python"),
        "-c",
        "import runlog_relay.sidecar.pipeline, runlog_relay.sidecar.command,"
        " runlog_relay.operator.runner, runlog_relay.operator.handlers, kopf, minio",
    )
    # The project is installed from its wheel, not linked to the source tree.
    location = run(
        str(venv / "bin" / "python"), "-c", "import runlog_relay; print(runlog_relay.__file__)"
    )
    assert location.startswith(str(venv)), location
    licenses = list(venv.glob("lib/python3*/site-packages/runlog_relay-*.dist-info/licenses/*"))
    assert [p.name for p in licenses] == ["LICENSE"]
    # Read-only root filesystem: running wrote nothing into the venv (no .pyc, no cache).
    assert _files(venv) == before, sorted(_files(venv) - before)
