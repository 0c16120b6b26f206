"""Every bad model directory is one line and exit 2; a tokenizer that marks the tool-call and
think tags special still gives tool calls and thinking."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clirun import agent_cli, json_events

pytestmark = pytest.mark.slow

TAGS = ("<tool_call>", "</tool_call>", "<think>", "</think>")


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _not_json(model: Path) -> None:
    (model / "config.json").write_text('{"model_type": "qwen3",')


def _other_architecture(model: Path) -> None:
    _edit_json(model / "config.json", lambda c: c.update(model_type="llama"))


def _three_bits(model: Path) -> None:
    _edit_json(model / "config.json", lambda c: c["quantization_config"].update(bits=3))


def _odd_group_size(model: Path) -> None:
    _edit_json(model / "config.json", lambda c: c["quantization_config"].update(group_size=100))


def _no_weights(model: Path) -> None:
    for file in model.glob("*.safetensors"):
        file.unlink()


def _truncated_weights(model: Path) -> None:
    (weights,) = model.glob("*.safetensors")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def _garbage_weights(model: Path) -> None:
    (weights,) = model.glob("*.safetensors")
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json header!")


def _no_tokenizer(model: Path) -> None:
    (model / "tokenizer.json").unlink()


def _config_and_weights_disagree(model: Path) -> None:
    # One layer more than the weights hold: only the loader itself can notice.
    _edit_json(
        model / "config.json", lambda c: c.update(num_hidden_layers=c["num_hidden_layers"] + 1)
    )


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (_not_json, "config.json is not valid JSON"),
        (_other_architecture, "holds a llama checkpoint; agent runs Qwen3 models"),
        (_three_bits, "GPTQ with 3 bits is not supported"),
        (_odd_group_size, "GPTQ group size 100 is not supported"),
        (_no_weights, "has no weights"),
        (_truncated_weights, "is cut short"),
        (_garbage_weights, "is not a safetensors file"),
        (_no_tokenizer, "cannot load the tokenizer"),
        (_config_and_weights_disagree, "has no tensor model.layers.2."),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else "",
)
def test_a_bad_model_directory_is_one_line(
    tiny_gptq: Path, tmp_path: Path, breakage: Callable[[Path], None], expected: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_gptq, model)
    breakage(model)
    done = agent_cli("run", "Hello", "--model", str(model), "--no-tools", home=tmp_path / "home")
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert expected in lines[0] and str(model) in lines[0]


def _mark_tags_special(model: Path) -> None:
    def tokenizer(data: dict) -> None:
        for token in data["added_tokens"]:
            if token["content"] in TAGS:
                token["special"] = True

    def config(data: dict) -> None:
        for token in data.get("added_tokens_decoder", {}).values():
            if token["content"] in TAGS:
                token["special"] = True

    _edit_json(model / "tokenizer.json", tokenizer)
    _edit_json(model / "tokenizer_config.json", config)


@pytest.mark.parametrize("engine", ["native", "transformers"])
def test_tags_marked_special_still_give_tool_calls_and_thinking(
    tiny_trained_gptq: Path, tmp_path: Path, engine: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_trained_gptq, model)
    _mark_tags_special(model)
    args = ["--model", str(model), "--engine", engine, "--seed", "1", "--json"]
    done = agent_cli(
        "run", "What time is it in Paris?", "--thinking", *args, home=tmp_path / "home"
    )
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    kinds = [event["type"] for event in events]
    assert "thinking" in kinds and "tool_call" in kinds, kinds
    (call,) = [event for event in events if event["type"] == "tool_call"]
    assert call["name"] == "time-get_current_time"
    (answer,) = [event["text"] for event in events if event["type"] == "answer"]
    assert answer.startswith("The time in Paris is") and "<tool_call>" not in answer
