"""The tools the model calls during generation: the restricted calculator and the sandboxed Python process."""

from __future__ import annotations

import socket

import pytest

from nanoforge.serve.tools import CalculatorError, CalculatorTimeout, calculate, format_result, run_python


@pytest.mark.parametrize("expression, expected", [
    ("1+2*3", "7"),
    ("(2 + 3) ** 2", "25"),
    ("7 / 2", "3.5"),
    ("7 // 2", "3"),
    ("-5 % 3", "1"),
    ("0.1 + 0.2", "0.3"),
    ("2 ** -2", "0.25"),
    ("12345679 * 81", "999999999"),
    ("'strawberry'.count('r')", "3"),
    ("len('hello')", "5"),
    ("'Mississippi'.lower().count('s')", "4"),
])
def test_calculator_computes(expression, expected):
    assert format_result(calculate(expression)) == expected


@pytest.mark.parametrize("expression, reason", [
    ("__import__('os').system('true')", "may be called"),
    ("().__class__.__bases__", "unsupported syntax"),
    ("open('/etc/passwd').read()", "may be called"),
    ("x + 1", "unsupported syntax: Name"),
    ("9 ** 999999", "exponent too large"),
    ("99 ** 999", "too large"),
    ("10 ** 50 * 10 ** 60", "too large"),
    ("'a' * 10", "arithmetic needs numbers"),
    ("1 / 0", "division by zero"),
    ("[1, 2, 3]", "unsupported syntax"),
    ("lambda: 1", "unsupported syntax"),
    ("1e308 * 10", "not finite"),
    ("", "empty"),
    ("1 +", "not a valid expression"),
    ("1" * 600, "longer than"),
    ("2 ** 10 ** 10", "exponent too large"),
])
def test_calculator_refuses(expression, reason):
    with pytest.raises(CalculatorError, match=reason):
        calculate(expression)


def test_calculator_stops_at_its_deadline():
    expression = " + ".join(["12345 * 6789"] * 30)
    assert calculate(expression) == 30 * 12345 * 6789
    with pytest.raises(CalculatorTimeout):
        calculate(expression, time_limit_s=0.0)


def test_sandbox_runs_code_in_an_empty_temp_dir_with_a_scrubbed_environment():
    result = run_python("import os\nprint(6 * 7)\nprint(os.listdir('.'))\nprint(sorted(os.environ))")
    assert result.ok, result.output
    lines = result.output.splitlines()
    assert lines[0] == "42" and lines[1] == "[]"
    assert "NANOFORGE_RUN_DIR" not in lines[2] and "VIRTUAL_ENV" not in lines[2]


def test_sandbox_limits_memory_cpu_and_wall_time():
    memory = run_python("x = bytearray(2 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert not memory.ok and "MemoryError" in memory.output and "allocated" not in memory.output

    busy = run_python("while True: pass", timeout_s=1)
    assert busy.timed_out or busy.returncode not in (0, None)

    sleeping = run_python("import time\ntime.sleep(60)", timeout_s=1)
    assert sleeping.timed_out and not sleeping.ok

    crash = run_python("raise SystemExit(3)")
    assert not crash.ok and crash.returncode == 3


def test_sandbox_has_no_network():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        via_socket = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\nprint('connected')")
        # _socket skips the Python-level block: only the empty network namespace stops this one.
        via_raw = run_python(f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\nprint('connected')")
    for result in (via_socket, via_raw):
        assert not result.ok and "connected" not in result.output, result.output


def test_sandbox_output_is_truncated():
    result = run_python("print('x' * 100000)", max_output_chars=1000)
    assert result.ok and len(result.output) <= 1000 and result.output.endswith("[truncated]")
