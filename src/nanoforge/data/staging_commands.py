"""`nanoforge stage` (download every asset a run needs) and `nanoforge preflight` (check them offline)."""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    from nanoforge.cli import add_config_args
    from nanoforge.data.manifest import STAGES

    stage = subparsers.add_parser(
        "stage", help="download every asset a run needs (parallel, resumable, checksummed) into the data dir",
        description="Download the run's manifest into $NANOFORGE_HOME/data (or data.data_dir). Give a run "
                    "directory with a config.yaml, or a preset. Mirror: data.mirror or $NANOFORGE_MIRROR.",
    )
    stage.add_argument("--run-dir", help="run directory whose config.yaml says what to fetch")
    add_config_args(stage)
    stage.add_argument("--jobs", type=int, default=8, help="parallel downloads (default 8)")
    stage.add_argument("--stages", help="only what these stages read, comma-separated (default: all)")
    stage.add_argument("--retries", type=int, default=6, help="retries per file without progress (default 6)")
    stage.add_argument("--dry-run", action="store_true", help="list the manifest and exit")
    stage.add_argument("--no-progress", action="store_true", help="no progress bar")
    stage.set_defaults(handler=_stage)

    preflight = subparsers.add_parser(
        "preflight", help="load every asset a stage reads with the network off; exit 3 listing what is missing",
    )
    preflight.add_argument("--run-dir", required=True, help="run directory")
    add_config_args(preflight)
    preflight.add_argument("--stage", choices=STAGES,
                           help="check what this stage reads (default: everything to stage for the run)")
    preflight.set_defaults(handler=_preflight)


def run_config(args, create: bool = False):
    """The run's stored config.yaml when the run dir has one (the source of truth), else the one built from
    --preset/--config/--set; with `create`, that one is saved as the run's config.yaml."""
    from nanoforge.cli import config_from_args
    from nanoforge.config import load_yaml, make_config, save_config
    from nanoforge.errors import UserError

    run_dir = Path(args.run_dir) if getattr(args, "run_dir", None) else None
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file; give a folder")
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        base = load_yaml(run_dir / "config.yaml")
        if args.preset and args.preset != base.get("preset"):
            raise UserError(f"{run_dir} was created with preset '{base.get('preset')}', not '{args.preset}'; "
                            "use another --run-dir or drop --preset")
        return make_config(None, args.overrides, base=base)
    if not (args.preset or args.config):
        if run_dir is not None:
            raise UserError(f"{run_dir / 'config.yaml'} does not exist; pass a run directory with a config or --preset")
        raise UserError("say which run to stage: --run-dir DIR or --preset NAME")
    cfg = config_from_args(args)
    if create and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return cfg


def _stage(args) -> int:
    from nanoforge.data.manifest import assets_for_stages, build_manifest, is_local_corpus, local_corpus_command
    from nanoforge.data.manifest import parse_stages
    from nanoforge.data.staging import Stager, StagingError
    from nanoforge.errors import UserError

    if not 1 <= args.jobs <= 64:
        raise UserError(f"--jobs must be between 1 and 64, got {args.jobs}")
    if args.retries < 0:
        raise UserError(f"--retries must be >= 0, got {args.retries}")
    stages = parse_stages(args.stages)
    cfg = run_config(args, create=not args.dry_run)
    assets = assets_for_stages(build_manifest(cfg), stages)
    data_dir = cfg.data_dir()
    if not assets:
        why = (f"corpus '{cfg.data.corpus}' is built locally: {local_corpus_command(cfg)}"
               if is_local_corpus(cfg) else "no stage selected reads a downloaded asset")
        print(f"nothing to download ({why})")
        return 0
    if args.dry_run:
        for a in assets:
            print(f"{a.download_path}\t{a.url}\t{','.join(a.stages)}")
        print(f"{len(assets)} file(s) -> {data_dir}")
        return 0
    print(f"staging {len(assets)} file(s) for stages {','.join(stages)} into {data_dir} with {args.jobs} jobs",
          flush=True)
    try:
        summary = Stager(data_dir, jobs=args.jobs, retries=args.retries, progress=not args.no_progress).run(assets)
    except KeyboardInterrupt:
        print("interrupted: finished files are kept and .part files resume on the next run", file=sys.stderr)
        raise
    print(summary.format())
    if summary.failed:
        lines = "\n".join(f"  {a.download_path}: {why}" for a, why in summary.failed)
        raise StagingError(f"{len(summary.failed)} file(s) failed:\n{lines}\nrun the same command again to resume")
    return 0


def _preflight(args) -> int:
    from nanoforge.data.preflight import require

    cfg = run_config(args)
    report = require(cfg, args.run_dir, args.stage)
    print(report.format())
    return 0
