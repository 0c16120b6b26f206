"""calculator: arithmetic for the model, evaluated from the syntax tree (never `eval`).

    agent tools call calculator '{"expression": "2**100 / (3 + 4)"}'

Only numbers, + - * / // % **, unary + and -, parentheses, the constants below and calls of
the functions below are allowed. Results are bounded (integers up to 10,000 bits, exponents
up to 10,000, factorial up to 1,000), so no expression can take the machine down.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from agent.plugins import ToolError, tool

MAX_LENGTH = 1_000
MAX_BITS = 10_000
MAX_EXPONENT = 10_000
MAX_FACTORIAL = 1_000

OPERATORS: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "factorial": math.factorial,
    "gcd": math.gcd,
    "min": min,
    "max": max,
}


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression (integers exact): + - * / // % ** and parentheses,
    with pi, e, tau, sqrt, exp, log, log10, log2, sin, cos, tan, abs, round, floor, ceil,
    factorial, gcd, min, max.

    Args:
        expression: The expression, e.g. "2**100 / (3 + 4)" or "sqrt(2) * pi".
    """
    if len(expression) > MAX_LENGTH:
        raise ToolError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {exc.msg}") from None
    try:
        return str(_evaluate(tree.body))
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"cannot compute it: {exc}") from None


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(OPERATORS[type(node.op)](left, right))
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        return _call(node.func.id, node.args)
    raise ToolError(f"not allowed in an expression: {ast.unparse(node)!r}")


def _call(name: str, nodes: list[ast.expr]) -> Any:
    if name not in FUNCTIONS:
        raise ToolError(f"unknown function {name!r}; known: {', '.join(FUNCTIONS)}")
    args = [_evaluate(node) for node in nodes]
    if name == "factorial" and args and abs(args[0]) > MAX_FACTORIAL:
        raise ToolError(f"factorial is limited to {MAX_FACTORIAL}")
    return _bounded(FUNCTIONS[name](*args))


def _check_power(base: Any, exponent: Any) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponents are limited to {MAX_EXPONENT}")
    exact = isinstance(base, int) and isinstance(exponent, int)
    if exact and (base.bit_length() - 1) * exponent > MAX_BITS:
        raise ToolError(f"the result would be over {MAX_BITS} bits")


def _bounded(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ToolError(f"the result would be over {MAX_BITS} bits")
    return value
