"""`nanoforge container build|check`: build the Apptainer image, or validate its definition without apptainer."""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_DEFS = ("Apptainer.def", "containers/cpu.def")


def register(subparsers) -> None:
    container = subparsers.add_parser("container", help="build the Apptainer image or check its definition")
    sub = container.add_subparsers(dest="container_command", metavar="<subcommand>", required=True)

    build = sub.add_parser("build", help="apptainer build with fakeroot, scratch cache dirs, git SHA label, sha256")
    build.add_argument("--def", dest="def_file", default="Apptainer.def", help="definition file (default: %(default)s)")
    build.add_argument("--out", help="image to write (default: nanoforge.sif, nanoforge-cpu.sif for cpu.def)")
    build.add_argument("--scratch", help="folder for the build cache and tmp (default: $NANOFORGE_SCRATCH or $SCRATCH)")
    build.add_argument("--force", action="store_true", help="replace an existing image")
    build.add_argument("--dry-run", action="store_true", help="print the build command and environment, run nothing")
    build.set_defaults(handler=_build)

    check = sub.add_parser("check", help="validate definition files: pins, apps, labels, shellcheck (no apptainer)")
    check.add_argument("files", nargs="*", help=f"definition files (default: {' '.join(DEFAULT_DEFS)})")
    check.set_defaults(handler=_check)


def _repo_root() -> Path:
    """The build context: the folder with pyproject.toml, from the current directory upwards."""
    from nanoforge.errors import UserError

    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "src" / "nanoforge").is_dir():
            return folder
    raise UserError("run this from the nanoforge repository (no pyproject.toml with src/nanoforge found above "
                    f"{here}); the image is built from the repository root")


def _build(args) -> int:
    import os
    import shlex

    from nanoforge.cluster import container
    from nanoforge.errors import UserError

    repo = _repo_root()
    def_file = Path(args.def_file)
    def_file = def_file if def_file.is_absolute() else (Path.cwd() / def_file)
    if not def_file.is_file():
        raise UserError(f"definition file {args.def_file} not found; pass --def Apptainer.def or containers/cpu.def")
    default_out = "nanoforge-cpu.sif" if def_file.name == "cpu.def" else "nanoforge.sif"
    sif = Path(args.out or default_out).absolute()
    if args.scratch is not None and not Path(args.scratch).is_dir():
        raise UserError(f"--scratch {args.scratch} is not a folder; create it or pick another one")
    binary = container.find_binary()
    if binary is None and not args.dry_run:
        raise UserError(f"no apptainer or singularity binary on PATH; {container.INSTALL_HINT}")
    scratch = args.scratch or container.default_scratch(os.environ)
    plan = container.plan_build(def_file, sif, binary=binary or "apptainer", repo=repo, scratch=scratch,
                                env=os.environ, is_root=os.geteuid() == 0, force=args.force)
    env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env.items())
    print(f"cd {shlex.quote(str(repo))} && {env_text + ' ' if env_text else ''}{shlex.join(plan.argv)}")
    if scratch is None:
        print("note: no --scratch, $NANOFORGE_SCRATCH or $SCRATCH: the build cache goes to ~/.apptainer "
              "(tens of GB; home quotas are small)", file=sys.stderr)
    if args.dry_run:
        return 0
    record = container.run_build(plan, repo)
    size_gb = record["size_bytes"] / 1e9
    print(f"built {sif} ({size_gb:.2f} GB), sha256 {record['sha256']}; recorded in {sif.name}.sha256 and "
          f"{sif.name}.json")
    return 0


def _check(args) -> int:
    from nanoforge.errors import UserError

    try:
        from nanoforge.cluster.container_check import check_definition, cli_commands, summarize
    except ModuleNotFoundError as exc:
        raise UserError(f"the checker needs {exc.name}: pip install -e '.[dev]'") from None
    repo = _repo_root()
    files = [Path(f) for f in args.files] or [repo / f for f in DEFAULT_DEFS]
    problems: list[str] = []
    try:
        commands = cli_commands()
    except Exception as exc:  # a broken command module must not hide the definition problems
        problems.append(f"nanoforge CLI: cannot build its parser ({exc}); fix that module (app commands unchecked)")
        commands = None
    for path in files:
        found = check_definition(path, context=repo, pyproject=repo / "pyproject.toml", commands=commands)
        problems += found
        if not found:
            print(summarize(path, repo))
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 2
    return 0
