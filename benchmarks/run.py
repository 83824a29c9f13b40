"""``make bench``: every measurement of benchmarks/RESULTS.md, printed as one table.

``python -m benchmarks.run --help`` for the knobs; ``--quick`` runs everything with tiny counts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import floor, inprocess, instructions, memory, report, server_instructions, wrk
from .variants import BASELINE, CALLBACK_COUNTS, VARIANTS, VARIANTS_BY_NAME


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--variants", nargs="+", default=[v.name for v in VARIANTS], choices=VARIANTS_BY_NAME)
    parser.add_argument("--callbacks", nargs="+", type=int, default=list(CALLBACK_COUNTS))
    parser.add_argument("--requests", type=int, default=2000, help="requests per in-process batch")
    parser.add_argument("--repeats", type=int, default=15, help="in-process batches per variant")
    parser.add_argument("--wrk-seconds", type=int, default=3)
    parser.add_argument("--wrk-rounds", type=int, default=2)
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--memory-callbacks", type=int, default=3)
    parser.add_argument(
        "--instruction-requests", type=int, default=1000, help="requests counted under valgrind"
    )
    parser.add_argument(
        "--instruction-callbacks", nargs="+", type=int, default=[0, 3], help="callback counts under valgrind"
    )
    parser.add_argument(
        "--server-instruction-requests", type=int, default=500, help="requests to uvicorn under valgrind"
    )
    parser.add_argument("--skip-wrk", action="store_true")
    parser.add_argument("--skip-instructions", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the harness, not the code")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    args = _parser().parse_args(argv)
    if args.quick:
        args.requests, args.repeats, args.memory_requests = 20, 2, 200
        args.wrk_seconds, args.wrk_rounds = 1, 1
        args.instruction_requests = args.server_instruction_requests = 20
    variants: list[str] = list(args.variants)
    if BASELINE not in variants:
        variants.insert(0, BASELINE)
    sdk_floor = floor.measure(max(args.requests, 100))
    print("in-process ...", file=sys.stderr)
    in_process = inprocess.run(
        variants, args.callbacks, requests=args.requests, repeats=args.repeats, warmup=args.requests // 4
    )
    load = {}
    if not args.skip_wrk:
        print("uvicorn + wrk ...", file=sys.stderr)
        load = wrk.run(variants, args.callbacks, seconds=args.wrk_seconds, rounds=args.wrk_rounds)
    growth = []
    if not args.skip_memory:
        print("memory ...", file=sys.stderr)
        growth = [memory.measure(name, args.memory_callbacks, args.memory_requests) for name in variants]
    text = report.table(variants, args.callbacks, in_process, load, growth, sdk_floor)
    if not args.skip_instructions:
        if instructions.available() is None:
            text += "\n\nInstructions per request: not counted, valgrind is not installed"
        else:
            print("instructions (valgrind) ...", file=sys.stderr)
            counted_variants = [name for name in variants if name != "peer-asgi"]  # slow, and not ours
            counts = instructions.measure(
                counted_variants, args.instruction_callbacks, args.instruction_requests
            )
            lines = instructions.table(
                counted_variants, args.instruction_callbacks, counts, in_process, BASELINE
            )
            served = [BASELINE, *(name for name in ("ours-nosdk", "ours-default") if name in variants)]
            print("uvicorn under valgrind ...", file=sys.stderr)
            per_request = server_instructions.measure(served, [3], args.server_instruction_requests)
            lines += server_instructions.table(served, [3], per_request, BASELINE)
            text += "\n" + "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
