"""``python -m handjax.serve --workdir RUN``: the web page and API on a run's locked model.

    python -m handjax.serve --workdir runs/vgg19_custom                 # http://127.0.0.1:8000
    python -m handjax.serve --workdir runs/vgg19_custom --port 8080 --keep-uploads uploads/

Loads and compiles the model once, then serves with uvicorn until Ctrl-C or SIGTERM, which
stop taking new connections and answer every request already in flight first.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from handjax import cli, console


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m handjax.serve",
        description="Serve a finished run's locked model: a web page and a JSON API. "
                    "A research tool, not a medical device.")
    p.add_argument("--workdir", required=True, help="a finished run (python launch.py)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default loopback: this machine only)")
    p.add_argument("--port", type=console.int_at_least(0, 65535), default=8000)
    p.add_argument("--keep-uploads", metavar="DIR", default=None,
                   help="save every accepted upload into DIR under a random name "
                        "(default: uploads stay in memory only)")
    p.add_argument("--max-upload-mb", type=float, default=20.0,
                   help="bigger uploads are answered 413 (default 20)")
    p.add_argument("--max-queue", type=console.int_at_least(1), default=64,
                   help="requests waiting for the model beyond this are answered 503")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a request may take before it is answered 503 (default 30)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p.parse_args(argv)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    console.quiet()
    console.say(f"loading the locked model of {args.workdir} (Ctrl-C stops)")
    from handjax import user_errors
    from handjax.errors import SetupError
    from handjax.model.locked import load_model
    from handjax.serve.app import Settings, create_app, run_plots
    try:
        keep = Path(args.keep_uploads) if args.keep_uploads else None
        if keep is not None:
            try:
                keep.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SetupError(f"cannot create --keep-uploads folder {keep} ({e.strerror}); "
                                 "choose a folder you can write to") from e
        model = load_model(args.workdir)
    except user_errors() as e:  # one clear line, no traceback (HANDJAX_DEBUG=1 shows it)
        if os.environ.get("HANDJAX_DEBUG"):
            raise
        console.error(str(e))
        return 1
    settings = Settings(max_upload_mb=args.max_upload_mb, max_queue=args.max_queue,
                        timeout_s=args.timeout, keep_uploads=keep)
    app = create_app(model, settings, run_plots(args.workdir))
    console.check_interrupt()   # a Ctrl-C that something swallowed while loading stops here
    if not is_loopback(args.host):
        console.say(f"warning: listening on {args.host}: anyone who can reach this machine can "
                    "upload photos; there is no login and no encryption (HTTPS)")
    return serve(app, args.host, args.port, settings, args.access_log)


def serve(app, host: str, port: int, settings, access_log: bool = False) -> int:
    """Runs ``app`` under uvicorn until Ctrl-C or SIGTERM. In-flight requests are answered
    first (each finishes within its timeout, so that bounds the wait)."""
    import uvicorn
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            access_log=access_log,
                            timeout_graceful_shutdown=int(settings.timeout_s) + 5)
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn stops on Ctrl-C, then raises the signal again for whoever handles it next.
        if not server.started:
            raise
        console.say("stopped (Ctrl-C)")
        return cli.EXIT_INTERRUPTED
    return 0 if server.started else 1


if __name__ == "__main__":
    # one handler, as every command: Ctrl-C while loading is one line and exit 130
    sys.exit(cli.command(main, cli.INTERRUPTED_ONLY)())
