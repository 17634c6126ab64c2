"""`nanoforge chat` as users run it: one-shot with -p, interactive through a pseudo-terminal, piped stdin (as under
`apptainer exec` without a tty), and the bad-input exits."""

from __future__ import annotations

import os
import sys

from conftest import REPO, missing_infrastructure, nanoforge
from nanoforge.model.load import load_model, load_tokenizer
from nanoforge.serve.engine import Engine, SamplingParams


def expected_completion(run_dir, prompt: str, max_tokens: int) -> str:
    """What the engine answers in-process, greedily: the CLI must print exactly this."""
    model, _, _ = load_model(run_dir, "base")
    tok = load_tokenizer(run_dir)
    engine = Engine(model, tok)
    return "".join(engine.stream_text([tok.bos_id, *tok.encode(prompt)],
                                      SamplingParams(temperature=0, max_tokens=max_tokens)))


def test_one_shot_prints_the_reply_and_exits(trained_tiny_run):
    proc = nanoforge("chat", "--run-dir", str(trained_tiny_run), "-p", "The history of",
                     "--temperature", "0", "--max-tokens", "12")
    expected = expected_completion(trained_tiny_run, "The history of", 12)
    assert expected.strip(), "the trained model should say something"
    assert proc.stdout == expected + "\n"

    # $NANOFORGE_RUN_DIR stands in for --run-dir.
    via_env = nanoforge("chat", "-p", "The history of", "--temperature", "0", "--max-tokens", "12",
                        env={"NANOFORGE_RUN_DIR": str(trained_tiny_run)})
    assert via_env.stdout == proc.stdout


def test_interactive_session_through_a_pty(trained_tiny_run):
    try:
        import pexpect
    except ImportError:
        missing_infrastructure("pexpect (pip install -e '.[dev]')")
    child = pexpect.spawn(sys.executable, ["-m", "nanoforge", "chat", "--run-dir", str(trained_tiny_run),
                                           "--temperature", "0", "--max-tokens", "8"],
                          cwd=str(REPO), env={**os.environ, "TERM": "dumb"}, encoding="utf-8", timeout=120)
    try:
        child.expect_exact("you> ")
        child.sendline("The history of")
        child.expect_exact("model> ")
        child.expect_exact("you> ")
        reply = child.before.replace("\r\n", "\n").strip()
        assert reply == expected_completion(trained_tiny_run, "The history of", 8).strip()
        child.sendline("/temperature 0.7")
        child.expect_exact("(temperature 0.7)")
        child.sendline("/temperature hot")
        child.expect_exact("usage: /temperature X")
        child.sendline("/clear")
        child.expect_exact("(new conversation)")
        child.sendline("/nonsense")
        child.expect_exact("unknown command /nonsense")
        child.sendline("Once")
        child.expect_exact("model> ")
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_piped_stdin_without_a_tty(trained_tiny_run):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "nanoforge", "chat", "--run-dir", str(trained_tiny_run),
                           "--temperature", "0", "--max-tokens", "6"],
                          input="The history of\n/clear\nOnce\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2 and "(new conversation)" in proc.stdout
    assert "/temperature X, /quit" in proc.stderr


def test_bad_input_exits_2_with_one_line(trained_tiny_run, tmp_path):
    no_dir = nanoforge("chat", "-p", "hi", check=False, env={"NANOFORGE_RUN_DIR": ""})
    assert no_dir.returncode == 2 and "--run-dir" in no_dir.stderr and "Traceback" not in no_dir.stderr
    missing = nanoforge("chat", "--run-dir", str(tmp_path / "nope"), "-p", "hi", check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    untrained = tmp_path / "empty-run"
    untrained.mkdir()
    no_model = nanoforge("chat", "--run-dir", str(untrained), "-p", "hi", check=False)
    assert no_model.returncode == 2 and "Traceback" not in no_model.stderr
    bad_temp = nanoforge("chat", "--run-dir", str(trained_tiny_run), "-p", "hi", "--temperature", "-1", check=False)
    assert bad_temp.returncode == 2 and "temperature" in bad_temp.stderr
    no_stage = nanoforge("chat", "--run-dir", str(trained_tiny_run), "--stage", "sft", "-p", "hi", check=False)
    assert no_stage.returncode == 2 and "sft" in no_stage.stderr and "Traceback" not in no_stage.stderr
