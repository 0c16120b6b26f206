"""The package as a user installs it, not as it is checked out.

The sdist is built from the checkout's tracked files, the wheel from that sdist (so the sdist
holds what a build needs), and the wheel installed into a fresh virtual environment outside
the checkout. Its dependencies come from this environment (a `.pth` line: quick, and no
download), which adds their directory to `sys.path` without running this environment's own
`.pth` files, so the checkout's editable install stays out of it. The commands run from a
directory that is not the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from agent import __version__
from tests.clirun import json_events

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"calculator", "files_search", "files_read", "sqlite_query"}
BUILD = "from setuptools import build_meta as b; import sys; print(b.build_{}(sys.argv[1]))"


def _build(kind: str, source: Path, out: Path) -> Path:
    """Build an sdist or a wheel of `source` into `out` with setuptools' PEP 517 hooks."""
    done = subprocess.run(
        [sys.executable, "-c", BUILD.format(kind), str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel built from that sdist)."""
    work = tmp_path_factory.mktemp("build")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    tree = work / "tree"
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is not built
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    sdist = _build("sdist", tree, work / "dist")
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    [unpacked] = (work / "unpacked").iterdir()
    return sdist, _build("wheel", unpacked, work / "wheel")


@pytest.fixture(scope="module")
def installed(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `bin/` of a fresh virtual environment with the wheel installed."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", built[1]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return env_dir / "bin"


def installed_cli(
    bin_dir: Path, *args: str, home: Path, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The installed command (`agent`, or `qagent` as args[0]), run from `cwd`."""
    command = args[0] if args[0] in ("agent", "qagent") else "agent"
    rest = args[1:] if args[0] in ("agent", "qagent") else args
    env = {**os.environ, "AGENT_HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(bin_dir / command), *rest],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input="",
    )


def test_the_sdist_and_the_wheel_hold_the_defaults(built: tuple[Path, Path]) -> None:
    sdist, wheel = built
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    needed = [
        "agent/defaults/mcp_config.json",
        *(f"agent/defaults/tools/{name}.py" for name in ("calculator", "files", "sqlite_query")),
        "agent/engine/kernels/compiled_kernels.c",
        "agent/engine/kernels/int8_gemm.c",
        "agent/engine/kernels/bf16.h",
        "agent/sandbox/confine.py",
        "agent/sandbox/enter_cgroup.py",
        "agent/testing/tiny_trained.safetensors",
        "agent/eval/bfcl_data/NOTICE.md",
    ]
    assert [name for name in needed if name not in in_wheel] == []
    assert [name for name in ["pyproject.toml", *needed] if name not in in_sdist] == []
    assert not any(name.startswith(("tests/", "bench/")) for name in in_wheel)


def test_the_installed_command_has_the_default_and_shipped_tools(
    installed: Path, tmp_path: Path
) -> None:
    where = subprocess.run(
        [installed / "python", "-c", "import agent; print(agent.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ROOT) not in where and str(installed.parent) in where  # not the checkout's
    for command in ("agent", "qagent"):
        version = installed_cli(installed, command, "--version", home=tmp_path, cwd=tmp_path)
        assert (version.returncode, version.stdout) == (0, f"{command} {__version__}\n")
    listed = installed_cli(installed, "tools", "list", "--json", home=tmp_path, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = {row["name"] for row in json_events(listed.stdout)}
    assert {"time-get_current_time", "fetch-fetch"} | SHIPPED <= names
    doctor = installed_cli(installed, "doctor", "--json", home=tmp_path, cwd=tmp_path)
    rows = {row["name"]: row["detail"] for row in json_events(doctor.stdout)}
    home_config = tmp_path / "mcp_config.json"
    assert rows["agent"].startswith(__version__)
    assert rows["mcp servers"].startswith(str(installed.parent))  # the packaged defaults
    assert rows["mcp servers"].endswith(f"(the packaged defaults; {home_config} replaces them)")


def test_a_users_mcp_config_replaces_the_defaults(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "mcp_config.json").write_text('{"mcpServers": {}}')
    listed = installed_cli(installed, "tools", "list", "--json", home=tmp_path, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = {row["name"] for row in json_events(listed.stdout)}
    assert not any(name.startswith(("time-", "fetch-")) for name in names)
    assert names >= SHIPPED
    doctor = installed_cli(installed, "doctor", "--json", home=tmp_path, cwd=tmp_path)
    rows = {row["name"]: row["detail"] for row in json_events(doctor.stdout)}
    assert (
        rows["mcp servers"]
        == f"{tmp_path / 'mcp_config.json'} (yours: it replaces the packaged defaults)"
    )


def test_an_installed_run_calls_the_time_tool(
    installed: Path, tiny_trained_gptq: Path, tmp_path: Path
) -> None:
    done = installed_cli(
        installed,
        *("run", "What time is it in Tokyo?", "--json", "--seed", "1"),
        *("--model", str(tiny_trained_gptq)),
        home=tmp_path,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = json_events(done.stdout)
    assert events[0]["type"] == "run_started" and events[0]["version"] == __version__
    [call] = [event for event in events if event["type"] == "tool_call"]
    [result] = [event for event in events if event["type"] == "tool_result"]
    assert call["name"] == "time-get_current_time" and result["ok"] is True
    stamp = json.loads(result["content"])["datetime"]
    assert events[-2] == {"type": "answer", "text": f"The time in Tokyo is {stamp}."}
