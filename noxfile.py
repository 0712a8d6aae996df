"""Developer sessions: ``nox -s tests``, ``nox -s lint``, and the optional heavier checks.

Every session installs the CPU build of torch first (it lies on local disk on our machines);
installing anything that depends on torch before it would pull a multi-GB CUDA build.
"""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.4"
nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"


def _install_project(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the default test suite (the README's test command)."""
    _install_project(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(default=False)
@nox.parametrize("protobuf", ["5.29.6", "6.33.6", "7.36.2"])
def protobuf_compat(session: nox.Session, protobuf: str) -> None:
    """Config and record tests on the oldest and newest protobuf runtimes we support."""
    _install_project(session)
    session.install(f"protobuf=={protobuf}")
    session.run("python", "-m", "pytest", "tests/test_config.py", "tests/test_record.py", "-q")


@nox.session(default=False)
def proto(session: nox.Session) -> None:
    """Regenerate the *_pb2.py modules with protoc 29 (gencode that runs on protobuf 5.29 to 7.x)."""
    session.install("grpcio-tools==1.69.0")
    session.run(
        "python",
        "-m",
        "grpc_tools.protoc",
        "-I.",
        "--python_out=.",
        "--pyi_out=.",
        *sorted(str(p) for p in __import__("pathlib").Path("lightning_prune/proto").glob("*.proto")),
    )


@nox.session(default=False)
def torchvision_zoo(session: nox.Session) -> None:
    """Channel-prune every torchvision classification model and check it end to end (~40 min on 2 CPUs).

    Writes results/torchvision_zoo.md. Pass options through, e.g. ``nox -s torchvision_zoo -- --no-onnx``
    or ``-- --models resnet18,vit_b_16``.
    """
    session.install("torch==2.14.1", "torchvision==0.29.1")
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/torchvision_zoo.py", *session.posargs)


@nox.session(default=False)
def notebooks(session: nox.Session) -> None:
    """Execute the four walkthrough notebooks top to bottom (nbclient; about a minute each on 2 CPUs)."""
    _install_project(session)  # the test extra holds the notebooks extra's packages
    # -m "": run the executions (marked slow) even if addopts ever deselects slow tests.
    session.run("python", "-m", "pytest", "tests/notebooks", "-q", "-m", "", *session.posargs)


if __name__ == "__main__":
    nox.main()
