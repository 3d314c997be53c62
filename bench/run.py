"""The one entry point: run every benchmark and regenerate the generated part of docs/benchmarks.md.

    .venv/bin/python bench/run.py            # everything (about half an hour on 2 cores)
    .venv/bin/python bench/run.py --quick    # smaller workloads, fewer repetitions, no cold builds
    .venv/bin/python bench/run.py --only 1 3 # some sections; prints the table and leaves the docs alone
    .venv/bin/python bench/run.py --only 9 --update-docs  # re-measure section 9 alone, in the docs

Needs the dev stack up (``.venv/bin/aml-sandbox up``) and its images built. Everything it creates
(blob containers, temp folders, containers, images, runs' caches) is removed at the end.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # started as a script: bench/ is sys.path[0], the repository is not
    sys.path.insert(0, str(REPO))

from bench.common import Context, Section, machine  # noqa: E402
from bench.report import render, splice, splice_sections  # noqa: E402

#: Section number -> (what it measures, its module in bench/, which has ``run(ctx) -> Section``).
SECTIONS: dict[int, tuple[str, str]] = {
    1: ("upload", "upload"),
    2: ("submit", "submit"),
    3: ("mount materialisation", "mount"),
    4: ("data reading through the mount", "reading"),
    5: ("training throughput", "training"),
    6: ("image resolution", "images"),
    7: ("peak memory", "memory"),
    8: ("the tutorial end to end", "demo"),
    9: ("metric logging inside a run", "tracking"),
}
DOCUMENT = REPO / "docs" / "benchmarks.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads, fewer repetitions, no cold builds")
    parser.add_argument("--only", type=int, nargs="+", choices=sorted(SECTIONS), metavar="N",
                        help="run only these sections; prints the result instead of writing docs/benchmarks.md")
    parser.add_argument("--update-docs", action="store_true",
                        help="with --only: replace just these sections in docs/benchmarks.md (the others stay)")
    args = parser.parse_args(argv)
    if args.update_docs and not args.only:
        parser.error("--update-docs replaces some sections in docs/benchmarks.md: name them with --only N ...")
    wanted = args.only or sorted(SECTIONS)
    command = ".venv/bin/python bench/run.py" + (" --quick" if args.quick else "")
    if args.update_docs:
        command += " --only " + " ".join(map(str, args.only)) + " --update-docs"
    from sandbox.service.client import ServiceClient

    ctx = Context(quick=args.quick)
    ServiceClient(ctx.settings).health()  # fails at once, with the fix, when the stack is down
    about = machine()
    sections: list[Section] = []
    loads: list[float] = []  # the 1-minute load average as each section starts, and at the end
    try:
        for number in wanted:
            name, module = SECTIONS[number]
            ctx.log(f"== {number}. {name}")
            loads.append(os.getloadavg()[0])
            start = time.monotonic()
            try:
                run: Callable[[Context], Section] = importlib.import_module(f"bench.{module}").run
                section = run(ctx)
            except Exception as exc:  # one broken benchmark must not lose the others' figures
                import traceback

                traceback.print_exc()
                section = Section(number, name, error=f"{type(exc).__name__}: {exc}"[:500])
            section.seconds = time.monotonic() - start
            sections.append(section)
    finally:
        ctx.log("cleaning up")
        ctx.cleanup()
    loads.append(os.getloadavg()[0])
    total = time.monotonic() - ctx.started
    conditions = (f"Load on the machine (1-minute load average as each section started, then at the end): "
                  f"{', '.join(f'{load:.1f}' for load in loads)}, on {os.cpu_count()} cores.")
    generated = render(sections, about, command, total, args.quick, conditions)
    if args.update_docs:
        splice_sections(DOCUMENT, sections, about, command, total, args.quick, conditions)
        ctx.log(f"replaced section(s) {', '.join(map(str, wanted))} in {DOCUMENT.relative_to(REPO)}")
    elif args.only:
        print(generated)
    else:
        splice(DOCUMENT, generated)
        ctx.log(f"wrote {DOCUMENT.relative_to(REPO)}")
    ctx.log(f"done in {total:.0f} s")
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
