"""The settings table: layers, validation, the environment, and the README made from it."""

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import Settings, env_var, load_settings, settings_table, spec
from agent.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AGENT_HOME", str(tmp_path))
    for item in Settings.__dataclass_fields__.values():
        monkeypatch.delenv(env_var(item.name), raising=False)
    return tmp_path


def test_layers_defaults_file_environment_flags(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "config.toml").write_text(
        'threads = 3\nmax_steps = 5\ntools = ["time"]\nengine = "native"\n'
    )
    monkeypatch.setenv("AGENT_MAX_STEPS", "6")
    settings = load_settings({"engine": "transformers", "seed": None})
    assert settings.threads == 3  # the file
    assert settings.max_steps == 6  # the environment over the file
    assert settings.engine == "transformers"  # a flag over both
    assert settings.tools == ("time",)
    assert settings.seed is None and settings.kv_cache_mb == Settings().kv_cache_mb  # defaults


def test_only_settings_marked_env_are_read_from_the_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_THREADS", "2")
    monkeypatch.setenv("AGENT_SEED", "7")  # seed has no environment variable
    settings = load_settings()
    assert (settings.threads, settings.seed) == (2, None)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"top_p": 0.0}, "--top-p must be in (0, 1]"),
        ({"presence_penalty": 2.5}, "--presence-penalty must be in [0, 2]"),
        ({"code_memory_mb": -1}, "--code-memory must be >= 0 (0: no limit)"),
        ({"kv_cache_mb": -1}, "--kv-cache-mb must be >= 0 (0: no reuse)"),
        ({"tool_result_limit": 0}, "tool_result_limit must be > 0"),
        ({"engine": "turbo"}, "engine must be one of auto, native, transformers, not 'turbo'"),
    ],
)
def test_validation_comes_from_the_table(home: Path, source: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(source)
    assert str(raised.value) == expected


def test_config_file_values_are_validated_too(home: Path) -> None:
    (home / "config.toml").write_text('sandbox = "docker"\n')
    with pytest.raises(ConfigError, match="sandbox must be one of auto, bubblewrap, landlock"):
        load_settings()
    (home / "config.toml").write_text("threads = 'many'\n")
    with pytest.raises(ConfigError, match="'threads' must be a int, not 'many'"):
        load_settings()


def test_every_flag_belongs_to_an_option_group() -> None:
    for item in Settings.__dataclass_fields__.values():
        entry = spec(item)
        assert entry.help, item.name
        assert (entry.flag is None) == (entry.group is None), item.name


def test_readme_settings_table_is_the_one_the_table_makes() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = (
        "<!-- settings table: python -m agent.config -->\n",
        "<!-- end of settings table -->",
    )
    assert start in text and end in text
    shown = text.split(start, 1)[1].split(end, 1)[0]
    assert shown == settings_table(), "README is stale: paste the output of python -m agent.config"


def test_config_loads_where_tomllib_is_missing(tmp_path: Path) -> None:
    # Python 3.10 has no tomllib: the config loader falls back to tomli (the same parser).
    (tmp_path / "config.toml").write_text("threads = 4\n")
    code = (
        "import sys; sys.modules['tomllib'] = None\n"
        "from agent.config import load_settings, tomllib\n"
        "print(tomllib.__name__, load_settings().threads)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"AGENT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.stdout.split() == ["tomli", "4"], done.stderr
