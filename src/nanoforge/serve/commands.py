"""`nanoforge chat` and `nanoforge web`: talk to a trained model in the terminal or in the browser / over an
OpenAI-compatible API."""

from __future__ import annotations

STAGE_CHOICES = ("base", "mid", "sft")


def _add_model_args(p) -> None:
    p.add_argument("--run-dir", help="the trained run (default: $NANOFORGE_RUN_DIR)")
    p.add_argument("--stage", choices=STAGE_CHOICES, help="which stage's model (default: the most trained one)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda when available)")
    p.add_argument("--python-sandbox", action="store_true",
                   help="let the model run Python in a sandboxed process (off: only the calculator)")


def register(subparsers) -> None:
    p = subparsers.add_parser("chat", help="chat with a trained model in the terminal",
                              description="One-shot with -p, otherwise interactive: reads stdin line by line "
                              "(/clear, /temperature X, /quit). A base model completes the prompt as plain text.")
    _add_model_args(p)
    p.add_argument("-p", "--prompt", help="answer this one prompt and exit")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default 50)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--max-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed, for reproducible replies")
    p.set_defaults(handler=_chat)

    w = subparsers.add_parser("web", help="serve the chat web page and an OpenAI-compatible API",
                              description="A chat page at /, POST /v1/chat/completions (streaming or not), "
                              "GET /v1/models and GET /health. Binds 127.0.0.1 unless --host says otherwise.")
    _add_model_args(w)
    w.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    w.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    w.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens a request may ask for")
    w.set_defaults(handler=_web)


def _chat(args) -> int:
    from nanoforge.serve.chat import run_chat

    return run_chat(args)


def _web(args) -> int:
    from nanoforge.serve.web import run_web

    return run_web(args)
