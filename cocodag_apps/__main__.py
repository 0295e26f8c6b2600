"""``python -m cocodag_apps cocodag|maxent-train ARGS...``: the installed console scripts without the scripts.

``python -m cocodag_apps cocodag demo OUT`` is ``cocodag demo OUT``; ``python -m cocodag_apps maxent-train predict
...`` is ``maxent-train predict ...``.
"""
import sys

from .cli import APPS


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in APPS:
        names = " | ".join(APPS)
        print(f"usage: python -m cocodag_apps {{{names}}} [ARGS]...", file=sys.stderr)
        raise SystemExit(0 if args[:1] in (["-h"], ["--help"]) else 2)
    name, rest = args[0], args[1:]
    APPS[name](args=rest, prog_name=name)


if __name__ == "__main__":
    main()
