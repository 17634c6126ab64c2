"""Tools the model may call during generation.

- `calculate(expr)`: the calculator, always on. An AST walker, not `eval`: numbers, + - * / // % **, unary
  signs, parentheses, and a few string helpers for letter counting (`"strawberry".count("r")`, `len("abc")`).
  Every operation is bounded (exponent and operand sizes) and a deadline is checked between nodes, so a
  malicious expression can neither hang the server nor exhaust its memory.
- `run_python(code)`: a sandboxed Python process (resource limits, wall-clock timeout, empty temp cwd, a scrubbed
  environment, no network where the kernel lets us take it away). Off by default; the engine enables it only
  when asked.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

MAX_EXPRESSION_CHARS = 500
MAX_INT_DIGITS = 100  # results and operands beyond 10**100 are refused
MAX_EXPONENT = 1000
MAX_STRING_CHARS = 10_000
DEFAULT_TIME_LIMIT_S = 0.5


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate; the message is shown to the model."""


class CalculatorTimeout(CalculatorError):
    pass


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_STRING_METHODS = {"count", "lower", "upper", "strip"}


def _check_number(value):
    if isinstance(value, bool):
        raise CalculatorError("booleans are not numbers here")
    if isinstance(value, int) and value != 0 and math.log10(abs(value)) > MAX_INT_DIGITS:
        raise CalculatorError(f"number too large (more than {MAX_INT_DIGITS} digits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not finite")
    return value


def _power(base, exponent):
    if isinstance(exponent, (int, float)) and abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent too large (limit {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and base not in (0, 1, -1):
        # Estimate the size first: computing 9**999 just to refuse it would be the attack.
        if exponent * math.log10(abs(base)) > MAX_INT_DIGITS:
            raise CalculatorError(f"result too large (more than {MAX_INT_DIGITS} digits)")
    try:
        return base ** exponent
    except (OverflowError, ZeroDivisionError) as exc:
        raise CalculatorError(str(exc)) from None


class _Evaluator:
    def __init__(self, deadline: float):
        self.deadline = deadline

    def visit(self, node):
        if time.monotonic() > self.deadline:
            raise CalculatorTimeout("calculation timed out")
        if isinstance(node, ast.Expression):
            return self.visit(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float, str)):
                raise CalculatorError(f"unsupported constant {node.value!r}")
            if isinstance(node.value, str):
                if len(node.value) > MAX_STRING_CHARS:
                    raise CalculatorError("string too long")
                return node.value
            return _check_number(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.visit(node.left), self.visit(node.right)
            if isinstance(left, str) or isinstance(right, str):
                if isinstance(node.op, ast.Add) and isinstance(left, str) and isinstance(right, str):
                    if len(left) + len(right) > MAX_STRING_CHARS:
                        raise CalculatorError("string too long")
                    return left + right
                raise CalculatorError("arithmetic needs numbers")
            if isinstance(node.op, ast.Pow):
                return _check_number(_power(left, right))
            try:
                return _check_number(_BINARY[type(node.op)](left, right))
            except ZeroDivisionError:
                raise CalculatorError("division by zero") from None
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            value = self.visit(node.operand)
            if isinstance(value, str):
                raise CalculatorError("arithmetic needs numbers")
            return _UNARY[type(node.op)](value)
        if isinstance(node, ast.Call) and not node.keywords:
            return self._call(node)
        raise CalculatorError(f"unsupported syntax: {type(node).__name__}")

    def _call(self, node: ast.Call):
        args = [self.visit(a) for a in node.args]
        func = node.func
        if isinstance(func, ast.Name) and func.id == "len" and len(args) == 1 and isinstance(args[0], str):
            return len(args[0])
        if isinstance(func, ast.Attribute) and func.attr in _STRING_METHODS:
            target = self.visit(func.value)
            if not isinstance(target, str) or not all(isinstance(a, str) for a in args):
                raise CalculatorError(f".{func.attr}() works on strings only")
            if func.attr == "count" and len(args) == 1:
                return target.count(args[0])
            if func.attr != "count" and not args:
                return getattr(str, func.attr)(target)
        raise CalculatorError("only len(text) and text.count/lower/upper/strip() may be called")


def calculate(expression: str, time_limit_s: float = DEFAULT_TIME_LIMIT_S):
    """Evaluate a calculator expression; raise CalculatorError (or CalculatorTimeout) when refused."""
    expression = expression.strip()
    if not expression:
        raise CalculatorError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise CalculatorError("not a valid expression") from None
    except (ValueError, RecursionError, MemoryError):
        raise CalculatorError("expression too complex") from None
    try:
        return _Evaluator(time.monotonic() + time_limit_s).visit(tree)
    except RecursionError:
        raise CalculatorError("expression too deeply nested") from None


def format_result(value) -> str:
    """What the model sees as the tool output: integers exactly, floats without float noise."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.10g}"
    return str(value)


# -- sandboxed Python --------------------------------------------------------------------------------------

@dataclass
class SandboxResult:
    ok: bool
    output: str  # stdout, then stderr, truncated
    timed_out: bool = False
    returncode: int | None = None


# Runs first inside the sandboxed interpreter: without a network namespace (see _isolate), sockets are still
# refused at the Python level.
_PRELUDE = """
import socket as _s
def _no_network(*a, **k):
    raise OSError("network access is disabled in the sandbox")
_s.socket = _no_network
_s.create_connection = _no_network
_s.getaddrinfo = _no_network
del _s, _no_network
"""

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _isolate(memory_bytes: int, cpu_seconds: int, file_bytes: int) -> None:
    """preexec_fn: runs in the child before exec. Limits first, then try to drop into an empty network namespace."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.setsid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            libc.unshare(CLONE_NEWUSER | CLONE_NEWNET)
    except Exception:  # noqa: BLE001 - the Python-level socket block still applies
        pass


def _echo_last_expression(code: str) -> str:
    """Like a notebook cell: a final bare expression has its value printed (the model writes `x * 2`, not
    `print(x * 2)`). Code that does not parse is passed on unchanged so the sandbox reports the error."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1].value
        tree.body[-1] = ast.parse("_value = None\nif _value is not None: print(_value)").body[1]
        tree.body[-1:-1] = [ast.Assign(targets=[ast.Name("_value", ast.Store())], value=last, lineno=0)]
        ast.fix_missing_locations(tree)
        return ast.unparse(tree)
    return code


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, max_output_chars: int = 4000) -> SandboxResult:
    """Run untrusted code in a separate, limited Python process and return what it printed (and the value of a
    final bare expression)."""
    code = _echo_last_expression(code)
    cpu_seconds = max(1, math.ceil(timeout_s))
    with tempfile.TemporaryDirectory(prefix="nanoforge-sandbox-") as cwd:
        env = {"PATH": "/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-S", "-c", _PRELUDE + "\n" + code],
                cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s,
                preexec_fn=lambda: _isolate(memory_mb * 2**20, cpu_seconds, 10 * 2**20),
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode("utf-8", "replace")
            return SandboxResult(False, (out + "\ntimed out")[-max_output_chars:], timed_out=True)
    output = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    if len(output) > max_output_chars:
        output = output[: max_output_chars - 12] + "\n[truncated]"
    return SandboxResult(proc.returncode == 0, output, returncode=proc.returncode)
