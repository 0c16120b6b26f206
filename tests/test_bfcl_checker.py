"""BFCL data loading, tool schemas and the AST checker, scored on real pinned entries."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from agent.eval.bfcl_checker import Check, check_entry, standardize
from agent.eval.bfcl_data import CATEGORIES, BfclEntry, load_entries, tool_schema

COUNTS = {"simple": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200}
COUNTS["irrelevance"] = 240


@pytest.fixture(scope="module")
def entries() -> dict[str, BfclEntry]:
    return {entry.id: entry for entry in load_entries(CATEGORIES)}


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def score(entry: BfclEntry, calls: list[dict[str, Any]] | None, **options: Any) -> Check:
    return check_entry(entry.category, entry.functions, calls, entry.answers, **options)


# --- Data -------------------------------------------------------------------------------------


def test_load_entries_counts_per_category(entries: dict[str, BfclEntry]) -> None:
    for category, count in COUNTS.items():
        assert sum(entry.category == category for entry in entries.values()) == count


def test_load_entries_shape(entries: dict[str, BfclEntry]) -> None:
    first = entries["simple_python_0"]
    assert first.category == "simple"
    assert first.messages[0]["role"] == "user"
    assert first.functions[0]["name"] == "calculate_triangle_area"
    assert first.answers == [
        {"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}
    ]
    assert entries["irrelevance_0"].answers is None


def test_load_entries_limit_keeps_file_order() -> None:
    loaded = load_entries(["parallel", "simple"], limit=3)
    assert [entry.id for entry in loaded] == [
        "parallel_0",
        "parallel_1",
        "parallel_2",
        "simple_python_0",
        "simple_python_1",
        "simple_python_2",
    ]


def test_unknown_category_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="simple, multiple, parallel"):
        load_entries(["java"])
    with pytest.raises(ValueError, match="unknown BFCL category"):
        check_entry("live_simple", [], [], None)


def test_tool_schema_converts_bfcl_types(entries: dict[str, BfclEntry]) -> None:
    distance = tool_schema(entries["simple_python_83"].functions[0])
    params = distance["parameters"]
    assert params["type"] == "object"
    assert params["properties"]["coord1"]["type"] == "array"
    assert params["properties"]["coord1"]["items"] == {"type": "number"}
    assert params["required"] == ["coord1", "coord2", "unit"]

    info = tool_schema(entries["simple_python_94"].functions[0])
    update = info["parameters"]["properties"]["update_info"]
    assert update["type"] == "object"
    assert update["properties"]["name"]["type"] == "string"

    forest = tool_schema(entries["simple_python_109"].functions[0])
    assert forest["name"] == "random_forest.train"
    assert "type" not in forest["parameters"]["properties"]["data"]
    assert forest["parameters"]["properties"]["data"]["description"]


def test_every_tool_schema_is_valid_json_schema(entries: dict[str, BfclEntry]) -> None:
    functions = [function for entry in entries.values() for function in entry.functions]
    assert len(functions) > 1000
    for function in functions:
        schema = tool_schema(function)
        assert set(schema) == {"name", "description", "parameters"}
        Draft202012Validator.check_schema(schema["parameters"])


# --- Checker: simple ---------------------------------------------------------------------------


def test_simple_correct_call_passes(entries: dict[str, BfclEntry]) -> None:
    entry = entries["simple_python_0"]
    assert score(entry, [call("calculate_triangle_area", base=10, height=5, unit="units")]).ok
    assert score(entry, [call("calculate_triangle_area", base=10, height=5)]) == Check(True, "")


def test_simple_wrong_calls_fail_with_reasons(entries: dict[str, BfclEntry]) -> None:
    entry = entries["simple_python_0"]
    cases = {
        "wrong function name": call("triangle_area", base=10, height=5),
        "missing required parameter 'height'": call("calculate_triangle_area", base=10),
        "unexpected parameter 'depth'": call("calculate_triangle_area", base=10, height=5, depth=1),
        "value of 'base' not among the possible answers": call(
            "calculate_triangle_area", base=11, height=5
        ),
        "wrong type for 'base'": call("calculate_triangle_area", base="10", height=5),
    }
    for reason, wrong in cases.items():
        assert score(entry, [wrong]) == Check(False, reason)


def test_simple_needs_exactly_one_call(entries: dict[str, BfclEntry]) -> None:
    entry = entries["simple_python_0"]
    right = call("calculate_triangle_area", base=10, height=5)
    assert score(entry, [right, right]) == Check(False, "wrong number of calls")
    assert score(entry, []) == Check(False, "wrong number of calls")


def test_unparsed_output_fails(entries: dict[str, BfclEntry]) -> None:
    for entry_id in ("simple_python_0", "multiple_0", "parallel_0", "parallel_multiple_0"):
        assert not score(entries[entry_id], None).ok


def test_int_accepted_for_float(entries: dict[str, BfclEntry]) -> None:
    entry = entries["simple_python_30"]  # initial_velocity: float, answers ["", 0.0]
    name = "kinematics.final_velocity_from_distance"
    assert score(entry, [call(name, acceleration=4, distance=300, initial_velocity=0)]).ok
    assert score(entry, [call(name, acceleration=4, distance=300, initial_velocity=0.0)]).ok
    # The other way round is a type error: a float where BFCL expects an integer.
    assert not score(entry, [call(name, acceleration=4.0, distance=300)]).ok


def test_bool_is_not_an_integer(entries: dict[str, BfclEntry]) -> None:
    entry = entries["simple_python_1"]
    assert score(entry, [call("math.factorial", number=True)]) == Check(
        False, "wrong type for 'number'"
    )


def test_strings_compared_after_standardisation(entries: dict[str, BfclEntry]) -> None:
    entry = entries["simple_python_36"]  # "New York City" to "Washington D.C."
    name = "get_shortest_driving_distance"
    assert score(entry, [call(name, origin="new york city", destination="WASHINGTON DC")]).ok
    assert score(entry, [call(name, origin="NewYork City", destination="washington, d.c.")]).ok
    assert not score(entry, [call(name, origin="New York", destination="Washington D.C.")]).ok
    assert standardize("April 1, 2024") == standardize("april 1 2024") == "april12024"


def test_lists_and_dicts_compared_element_wise(entries: dict[str, BfclEntry]) -> None:
    distance = entries["simple_python_83"]  # tuple of floats
    coords = {"coord1": [33.4484, -112.074], "coord2": [34.0522, -118.2437]}
    assert score(distance, [call("calculate_distance", **coords, unit="Miles")]).ok
    swapped = {"coord1": [-112.074, 33.4484], "coord2": coords["coord2"]}
    assert not score(distance, [call("calculate_distance", **swapped, unit="miles")]).ok

    info = entries["simple_python_94"]  # update_info: a dict
    update = {"name": "john doe", "email": "JohnDoe@email.com"}
    assert score(info, [call("update_user_info", user_id=43523, update_info=update)]).ok
    partial = {"name": "John Doe"}
    assert score(info, [call("update_user_info", user_id=43523, update_info=partial)]) == Check(
        False, "missing key 'email' in 'update_info'"
    )


def test_underscore_names_follow_bfcl(entries: dict[str, BfclEntry]) -> None:
    entry = entries["simple_python_1"]
    assert not score(entry, [call("math_factorial", number=5)]).ok
    assert score(entry, [call("math_factorial", number=5)], underscore_names=True).ok
    assert not score(entry, [call("math.factorial", number=5)], underscore_names=True).ok


# --- Checker: multiple, parallel, irrelevance -------------------------------------------------


def test_multiple_needs_the_right_function(entries: dict[str, BfclEntry]) -> None:
    entry = entries["multiple_0"]
    sides = {"side1": 5, "side2": 4, "side3": 3}
    assert score(entry, [call("triangle_properties.get", **sides, get_area=True)]).ok
    assert score(entry, [call("circle_properties.get", radius=5.0)]) == Check(
        False, "wrong function name"
    )


def test_parallel_in_any_order(entries: dict[str, BfclEntry]) -> None:
    entry = entries["parallel_0"]
    swift = call("spotify.play", artist="Taylor Swift", duration=20)
    maroon = call("spotify.play", artist="Maroon 5", duration=15)
    assert score(entry, [swift, maroon]).ok
    assert score(entry, [maroon, swift]).ok
    assert score(entry, [swift]) == Check(False, "wrong number of calls")
    wrong = call("spotify.play", artist="Maroon 5", duration=20)
    verdict = score(entry, [swift, wrong])
    assert not verdict.ok
    assert "no call matches the expected 'spotify.play'" in verdict.reason


def test_parallel_multiple_in_any_order(entries: dict[str, BfclEntry]) -> None:
    entry = entries["parallel_multiple_0"]
    limits = {"lower_limit": 1, "upper_limit": 1000}
    sums = call("math_toolkit.sum_of_multiples", **limits, multiples=[3, 5])
    primes = call("math_toolkit.product_of_primes", count=5)
    assert score(entry, [primes, sums]).ok
    assert not score(entry, [primes]).ok
    assert not score(entry, [primes, primes]).ok
    reordered = call("math_toolkit.sum_of_multiples", **limits, multiples=[5, 3])
    assert not score(entry, [primes, reordered]).ok  # list order matters


def test_irrelevance_wants_no_call(entries: dict[str, BfclEntry]) -> None:
    entry = entries["irrelevance_0"]
    assert score(entry, None).ok
    assert score(entry, []).ok
    bmi = call("determine_body_mass_index", weight=70.0, height=1.75)
    assert score(entry, [bmi]) == Check(False, "function called when none applies")
