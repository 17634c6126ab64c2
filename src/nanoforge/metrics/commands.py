"""`nanoforge metrics serve`: the login-node exporter for every run's metrics."""

from __future__ import annotations


def register(subparsers) -> None:
    metrics = subparsers.add_parser("metrics", help="expose training metrics to Prometheus")
    sub = metrics.add_subparsers(dest="metrics_command", metavar="<subcommand>", required=True)
    serve = sub.add_parser(
        "serve",
        help="one Prometheus endpoint for the newest metrics of every run under a runs folder (run on a login node)",
    )
    serve.add_argument("--runs", required=True, metavar="DIR", help="folder holding run directories")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=9400, help="port to listen on (default 9400; 0 picks one)")
    serve.add_argument("--file-sd", metavar="PATH",
                       help="also keep a Prometheus file_sd target list of runs serving over HTTP at PATH")
    serve.add_argument("--file-sd-every", type=float, default=10.0, metavar="SECONDS",
                       help="how often to rewrite the --file-sd list (default 10)")
    serve.set_defaults(handler=_serve)


def _serve(args) -> int:
    import signal
    import threading

    from nanoforge.errors import UserError
    from nanoforge.metrics.serve import serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    if args.file_sd_every <= 0:
        raise UserError(f"--file-sd-every must be positive, got {args.file_sd_every}")
    stop = threading.Event()
    # SIGTERM (fab, systemd, scancel) ends the loop the same way Ctrl-C does: socket closed, exit 0
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def ready(port: int) -> None:
        print(f"serving metrics of runs under {args.runs} at http://{args.host}:{port}/metrics", flush=True)

    try:
        serve(args.runs, args.host, args.port, file_sd=args.file_sd, file_sd_every=args.file_sd_every,
              stop=stop, ready=ready)
    except KeyboardInterrupt:
        pass
    return 0
