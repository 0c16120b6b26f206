"""BFCL's AST match for Python: whether a model's decoded calls answer a BFCL entry.

The rules follow `bfcl_eval/eval_checker/ast_eval/ast_checker.py` (bfcl-eval 2026.3.23),
rewritten; comments mark where we follow a surprising choice of theirs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agent.eval.bfcl_data import check_category

# BFCL type name -> the Python type a value must have ("any" means a string to BFCL).
_PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
_SEQUENCE_TYPES = ("array", "tuple")
_IGNORED_CHARS = re.compile(r"[ ,./\-_*^]")
_NO_MATCH = "value of {!r} not among the possible answers"


@dataclass(frozen=True)
class Check:
    """The verdict on one entry: ok, or why not (a short message)."""

    ok: bool
    reason: str = ""


_OK = Check(True)


def check_entry(
    category: str,
    functions: list[dict[str, Any]],
    calls: list[dict[str, Any]] | None,
    answers: list[dict[str, Any]] | None,
    *,
    underscore_names: bool = False,
) -> Check:
    """Score `calls` (`[{"name", "arguments"}]`, None when the output did not parse).

    `underscore_names` is BFCL's setting for models that cannot use '.' in a function name:
    the expected name then has its dots replaced by underscores before comparing.
    """
    check_category(category)
    if category == "irrelevance":
        # BFCL counts anything that is not a well-formed, non-empty call list as "no call".
        if not calls or not _well_formed(calls):
            return _OK
        return Check(False, "function called when none applies")
    if answers is None:
        raise ValueError(f"a {category!r} entry needs its possible answers")
    if calls is None or not _well_formed(calls):
        return Check(False, "output did not parse as function calls")
    if len(calls) != len(answers):
        return Check(False, "wrong number of calls")
    if category.startswith("parallel"):
        return _check_any_order(functions, calls, answers, underscore_names)
    # BFCL's simple checker takes the first (only) function; "multiple" looks the answer up.
    doc = functions[0] if category == "simple" else _find(functions, answers[0])
    return check_call(doc, calls[0], answers[0], underscore_names=underscore_names)


def check_call(
    doc: dict[str, Any],
    call: dict[str, Any],
    answer: dict[str, Any],
    *,
    underscore_names: bool = False,
) -> Check:
    """Match one call against one BFCL answer `{name: {param: [possible values]}}`."""
    expected = doc["name"].replace(".", "_") if underscore_names else doc["name"]
    if call["name"] != expected:
        return Check(False, "wrong function name")
    arguments: dict[str, Any] = call["arguments"]
    possible: dict[str, list[Any]] = next(iter(answer.values()))
    properties: dict[str, Any] = doc["parameters"]["properties"]
    for param in doc["parameters"]["required"]:
        if param not in arguments:
            return Check(False, f"missing required parameter {param!r}")
    for param, value in arguments.items():
        # A parameter absent from the answer is unexpected even when the doc offers it.
        if param not in properties or param not in possible:
            return Check(False, f"unexpected parameter {param!r}")
        reason = _check_value(param, value, properties[param], possible[param])
        if reason:
            return Check(False, reason)
    for param, values in possible.items():
        if param not in arguments and "" not in values:
            return Check(False, f"missing parameter {param!r} the answer requires")
    return _OK


def standardize(text: str) -> str:
    """BFCL's string normal form: no spaces or `,./-_*^`, lower case, `'` as `"`."""
    return _IGNORED_CHARS.sub("", text).lower().replace("'", '"')


def _well_formed(calls: list[dict[str, Any]]) -> bool:
    return all(
        isinstance(call, dict)
        and isinstance(call.get("name"), str)
        and isinstance(call.get("arguments"), dict)
        for call in calls
    )


def _find(functions: list[dict[str, Any]], answer: dict[str, Any]) -> dict[str, Any]:
    name = next(iter(answer))
    for doc in functions:
        if doc["name"] == name:
            return doc
    raise ValueError(f"the answer calls {name!r}, which the entry's functions lack")


def _check_any_order(
    functions: list[dict[str, Any]],
    calls: list[dict[str, Any]],
    answers: list[dict[str, Any]],
    underscore_names: bool,
) -> Check:
    # BFCL matches greedily: each answer in turn takes the first unused call that fits; it
    # does not search all pairings, so a call fitting two answers can be taken by the wrong one.
    used: set[int] = set()
    for answer in answers:
        doc = _find(functions, answer)
        reasons: list[str] = []
        for index, call in enumerate(calls):
            if index in used:
                continue
            verdict = check_call(doc, call, answer, underscore_names=underscore_names)
            if verdict.ok:
                used.add(index)
                break
            reasons.append(verdict.reason)
        else:
            detail = next((r for r in reasons if r != "wrong function name"), "no call to it")
            return Check(False, f"no call matches the expected {doc['name']!r}: {detail}")
    return _OK


def _check_value(param: str, value: Any, schema: dict[str, Any], possible: list[Any]) -> str:
    """Why `value` is not a possible answer for `param` ("" when it is)."""
    bfcl_type = schema["type"]
    expected = _PYTHON_TYPES[bfcl_type]
    item_type = _PYTHON_TYPES[schema["items"]["type"]] if bfcl_type in _SEQUENCE_TYPES else None
    if bfcl_type == "tuple" and type(value) is tuple:
        value = list(value)
    if bfcl_type == "float" and type(value) is int:  # Python's int -> float, not bool
        value = float(value)
    type_ok, is_variable = _type_check(value, possible, expected, item_type)
    if not type_ok:
        return f"wrong type for {param!r}"
    if is_variable:
        # BFCL: when the answers' type differs from the doc's (a variable name such as
        # "data['sales']" for a list, or None for a float), compare exactly, unnormalised.
        return "" if value in possible else _NO_MATCH.format(param)
    if expected is dict:
        return _check_dict(param, value, possible)
    if expected is list and item_type is dict:
        return "" if _list_of_dicts_ok(value, possible) else _NO_MATCH.format(param)
    if expected is str:
        options = [standardize(option) for option in possible if type(option) is str]
        return "" if standardize(value) in options else _NO_MATCH.format(param)
    if expected is list:
        return "" if _list_ok(value, possible) else _NO_MATCH.format(param)
    # Python equality, so 1 == 1.0 and, inside lists and dicts, True == 1.
    return "" if value in possible else _NO_MATCH.format(param)


def _answer_type(possible: list[Any]) -> type | None:
    """The type of the first possible value that is not "" (BFCL's mark for optional)."""
    return next((type(option) for option in possible if option != ""), None)


def _type_check(
    value: Any, possible: list[Any], expected: type, item_type: type | None
) -> tuple[bool, bool]:
    """(type ok, value is a "variable"): BFCL's type check, one level of nesting deep."""
    answer_type = _answer_type(possible)
    is_variable = answer_type is not None and answer_type is not expected
    value_type = type(value)  # compared by identity: bool is not int, as in BFCL
    if value_type is expected:
        if item_type is None:
            return True, is_variable
        for option in possible:
            # An option that is not a list ("" for optional) passes vacuously, as in BFCL; no
            # int -> float allowance for items, but an item may take the option's item type.
            if type(option) is not list or all(
                _type_check(item, option, item_type, None)[0] for item in value
            ):
                return True, is_variable
        return False, False
    if answer_type is not None and value_type is answer_type:
        return True, True
    return False, False


def _normal(value: Any) -> Any:
    return standardize(value) if type(value) is str else value


def _list_ok(value: list[Any], possible: list[Any]) -> bool:
    """Order matters; top-level strings are standardised, nested ones are not."""
    # Iterating an option "" (optional) gives [], so an empty list matches it, as in BFCL.
    normal = [_normal(item) for item in value]
    return any(normal == [_normal(item) for item in option] for option in possible)


def _check_dict(param: str, value: dict[str, Any], possible: list[Any]) -> str:
    reason = _NO_MATCH.format(param)  # BFCL's "unclear": also when every option is ""
    for option in possible:
        if option == "":
            continue
        reason = _dict_reason(param, value, option)
        if not reason:
            return ""
    return reason


def _dict_reason(param: str, value: dict[str, Any], option: dict[str, list[Any]]) -> str:
    """One level only: nested dicts and lists inside are compared exactly."""
    for key, item in value.items():
        if key not in option:
            return f"unexpected key {key!r} in {param!r}"
        if _normal(item) not in [_normal(choice) for choice in option[key]]:
            return _NO_MATCH.format(f"{param}[{key!r}]")
    for key, choices in option.items():
        if key not in value and "" not in choices:
            return f"missing key {key!r} in {param!r}"
    return ""


def _list_of_dicts_ok(value: list[Any], possible: list[Any]) -> bool:
    """Same length and each dict matching in order; an option "" matches only []."""
    for option in possible:
        if len(value) != len(option):
            continue
        # BFCL would crash on a non-dict item here; we count it as a mismatch.
        if all(
            type(item) is dict and type(want) is dict and not _dict_reason("", item, want)
            for item, want in zip(value, option, strict=True)
        ):
            return True
    return False
