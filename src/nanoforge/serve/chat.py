"""`nanoforge chat`: talk to a trained model in the terminal.

Reads stdin line by line and writes replies to stdout as they are produced, so it works the same on a terminal,
through a pipe and inside `apptainer exec` (no tty, no readline required). A base model gets plain completion of
the prompt; mid and sft models get the chat template with the conversation so far.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from nanoforge.errors import UserError

HELP = "commands: /clear (new conversation), /temperature X, /quit"


def resolve_run_dir(arg: str | None) -> Path:
    value = arg or os.environ.get("NANOFORGE_RUN_DIR")
    if not value:
        raise UserError("no run directory given; pass --run-dir DIR or set NANOFORGE_RUN_DIR")
    run_dir = Path(value)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass --run-dir of a trained run")
    return run_dir


def pick_device(name: str | None = None):
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_engine(run_dir: Path, stage: str | None, device=None, python_sandbox: bool = False):
    """(engine, stage) for a run's newest (or the named) stage."""
    from nanoforge.model.load import load_model, load_tokenizer
    from nanoforge.serve.engine import Engine

    device = pick_device(device) if not hasattr(device, "type") else device
    tokenizer = load_tokenizer(run_dir)
    model, _, meta = load_model(run_dir, stage, device=device)
    return Engine(model, tokenizer, device, python_sandbox=python_sandbox), meta["stage"]


class ChatSession:
    """One conversation's state; `reply(text)` streams the assistant's answer and remembers it."""

    def __init__(self, engine, stage: str, params):
        self.engine = engine
        self.chat_template = stage != "base"
        self.params = params
        self.messages: list[dict] = []
        self.turns = 0

    def clear(self) -> None:
        self.messages = []
        self.turns = 0

    def prompt_ids(self, text: str) -> list[int]:
        from nanoforge.tokenizer.chat import render_for_completion

        tok = self.engine.tokenizer
        if not self.chat_template:
            return [tok.bos_id, *tok.encode(text)]
        return render_for_completion(tok, {"messages": [*self.messages, {"role": "user", "content": text}]})

    def reply(self, text: str):
        """Yield text pieces of the reply; the turn is added to the history once complete."""
        import codecs

        from nanoforge.serve.engine import tokens_to_parts

        prompt = self.prompt_ids(text)
        room = self.engine.max_context - len(prompt)
        if room < 1:
            raise UserError("the conversation no longer fits in the model's context; type /clear to start over")
        ids: list[int] = []
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        params = self.params
        if params.seed is not None:  # reproducible session, but not the same draw at every turn
            params = dataclasses.replace(params, seed=params.seed + self.turns)
        self.turns += 1
        for step in self.engine.stream(prompt, params):
            ids.append(step[0].id)
            piece = self.engine.token_text(step[0].id, decoder)
            if piece:
                yield piece
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
        if self.chat_template:
            self.messages += [{"role": "user", "content": text},
                              {"role": "assistant", "content": tokens_to_parts(self.engine.tokenizer, ids) or ""}]


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_chat(args) -> int:
    from nanoforge.serve.engine import SamplingParams

    run_dir = resolve_run_dir(args.run_dir)
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_tokens=args.max_tokens, seed=args.seed)
    try:
        params.validate()
    except ValueError as exc:
        raise UserError(f"{exc} (see nanoforge chat --help)") from None
    engine, stage = load_engine(run_dir, args.stage, args.device, python_sandbox=args.python_sandbox)
    session = ChatSession(engine, stage, params)

    if args.prompt is not None:
        for piece in session.reply(args.prompt):
            _write(piece)
        _write("\n")
        return 0

    print(f"nanoforge chat: {run_dir.name}, stage {stage}, {engine.device}. {HELP}", file=sys.stderr, flush=True)
    while True:
        _write("you> ")
        line = sys.stdin.readline()
        if not line:  # end of input
            _write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, value = text.partition(" ")
            if command == "/quit":
                return 0
            if command == "/clear":
                session.clear()
                _write("(new conversation)\n")
            elif command == "/temperature":
                try:
                    temperature = float(value)
                    if not 0 <= temperature <= 10:
                        raise ValueError
                except ValueError:
                    _write("(usage: /temperature X, with X between 0 and 10)\n")
                    continue
                params.temperature = temperature
                _write(f"(temperature {temperature:g})\n")
            else:
                _write(f"(unknown command {command}; {HELP})\n")
            continue
        _write("model> ")
        try:
            for piece in session.reply(text):
                _write(piece)
        except UserError as exc:
            _write(f"({exc})")
        _write("\n")
