"""`nanoforge data build-demo`: the offline demo corpus."""

from __future__ import annotations

import json
import time
from pathlib import Path

MIN_SIZE_MB = 0.01  # enough for two documents, hence a training and a validation shard


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build and inspect corpora (parquet shards)")
    sub = data.add_subparsers(dest="data_command", metavar="<subcommand>", required=True)
    demo = sub.add_parser(
        "build-demo",
        help="write the demo corpus from text every Python installation carries (no download)",
    )
    demo.add_argument("--out", help="output folder (default: <data_dir>/corpora/demo, data_dir = $NANOFORGE_HOME/data)")
    demo.add_argument("--size-mb", type=float, default=None, help="megabytes of text (default: 30)")
    demo.add_argument("--force", action="store_true", help="rebuild even if an identical corpus is already there")
    demo.set_defaults(handler=_build_demo)


def _build_demo(args) -> int:
    import sys

    from nanoforge.config import RunConfig
    from nanoforge.data.demo_corpus import DEFAULT_SIZE_MB, MANIFEST_FILE, build_demo_corpus
    from nanoforge.errors import UserError

    size_mb = DEFAULT_SIZE_MB if args.size_mb is None else args.size_mb
    if not size_mb >= MIN_SIZE_MB or size_mb == float("inf"):
        raise UserError(f"--size-mb must be a number >= {MIN_SIZE_MB}, got {args.size_mb}")
    out = Path(args.out) if args.out else RunConfig().data_dir() / "corpora" / "demo"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder path")
    manifest_path = out / MANIFEST_FILE
    if out.is_dir() and any(out.iterdir()) and not args.force:
        if not manifest_path.is_file():
            raise UserError(f"{out} exists and is not a demo corpus; choose another --out or remove it")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
        same_request = (
            manifest.get("size_mb_requested") == size_mb and manifest.get("python") == sys.version.split()[0]
        )
        if same_request and all((out / name).is_file() for name in manifest.get("shards", ["?"])):
            print(
                f"demo corpus already at {out} ({manifest['documents']} documents, "
                f"{manifest['bytes'] / 1e6:.1f} MB, {len(manifest['shards'])} shards); skipping (--force rebuilds)"
            )
            return 0

    start = time.perf_counter()
    summary = build_demo_corpus(out, size_mb)
    seconds = time.perf_counter() - start
    print(
        f"demo corpus: {summary.documents} documents, {summary.bytes / 1e6:.1f} MB, {summary.shards} shards "
        f"(last one is validation) in {out} [{seconds:.1f} s]"
    )
    if not summary.complete:
        print(f"note: this Python installation only has {summary.bytes / 1e6:.1f} MB of text, less than the "
              f"{size_mb:g} MB asked for")
    return 0
