"""`nanoforge <command>`: argument parsing only. Each concern registers its commands from its own
`commands.py`; handlers import heavy modules (torch) lazily so `--help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING

from nanoforge import __version__
from nanoforge.errors import UserError

if TYPE_CHECKING:  # the config module is imported lazily by handlers
    from nanoforge.config import RunConfig

# One module per concern, each with `register(subparsers)`.
COMMAND_MODULES = [
    "nanoforge.config_commands",
    "nanoforge.train.commands",
    "nanoforge.train.pipeline",
    "nanoforge.data.commands",
    "nanoforge.data.staging_commands",
    "nanoforge.tokenizer.commands",
    "nanoforge.metrics.commands",
    "nanoforge.cluster.container_commands",
    "nanoforge.cluster.commands",
    "nanoforge.serve.commands",
    "nanoforge.eval.commands",
    "nanoforge.report.commands",
    "nanoforge.workflows.commands",
]


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line and exit 2 (the bad-input contract). Subparsers inherit this class."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nanoforge",
        description="Train a ChatGPT-style model from scratch: locally on a CPU or on a SLURM GPU cluster.",
    )
    parser.add_argument("--version", action="version", version=f"nanoforge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The options every config-driven command shares."""
    parser.add_argument("--preset", help="demo | d20 | d26 | workflows (ignored when the run dir has a config.yaml)")
    parser.add_argument("--config", help="YAML run config to start from")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.device_batch_size=8 (repeatable)",
    )


def config_from_args(args) -> RunConfig:
    from nanoforge.config import load_yaml, make_config

    base = load_yaml(args.config) if getattr(args, "config", None) else None
    return make_config(args.preset, args.overrides, base=base)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"nanoforge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130

if __name__ == "__main__":
    raise SystemExit(main())
