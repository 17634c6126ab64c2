"""`nanoforge config show`: the derived numbers of a preset or run config."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    from nanoforge.cli import add_config_args

    config = subparsers.add_parser("config", help="inspect run configs and their derived numbers")
    sub = config.add_subparsers(dest="config_command", metavar="<subcommand>", required=True)
    show = sub.add_parser("show", help="print parameters, FLOPs/token, tokens, steps, batch split, GPU-hours, cost")
    add_config_args(show)
    show.add_argument("--world-size", type=int, help="GPUs in total (default: hardware.gpus_per_node x nodes)")
    show.add_argument("--json", action="store_true", help="print the config and plan as JSON")
    show.add_argument("--yaml", action="store_true", help="print the full config as YAML")
    show.set_defaults(handler=_show)


def _show(args) -> int:
    import yaml

    from nanoforge.cli import config_from_args
    from nanoforge.errors import UserError
    from nanoforge.plan import derive_plan, format_plan

    if args.world_size is not None and args.world_size <= 0:
        raise UserError(f"--world-size must be positive, got {args.world_size}")
    cfg = config_from_args(args)
    plan = derive_plan(cfg, args.world_size)
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "plan": plan.to_dict()}, indent=2))
    elif args.yaml:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    else:
        print(format_plan(cfg, plan))
    return 0
