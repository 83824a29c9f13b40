"""``make bench``: every measurement of benchmarks/RESULTS.md, printed as one table.

``python -m benchmarks.run --help`` for the knobs; ``--quick`` runs everything with tiny counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import floor, inprocess, instructions, memory, report, server, server_instructions, targets, wrk
from .targets import Key, Verdict
from .variants import BASELINE, CALLBACK_COUNTS, FASTAPI, PEER, STORM, VARIANTS, Group

_started = time.monotonic()  # imported as make bench starts


def _progress(stage: str) -> None:
    # the time since the start with each stage: how long each group takes, read off the log
    print(f"[{time.monotonic() - _started:5.0f} s] {stage} ...", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    names = [v.name for v in VARIANTS]
    parser.add_argument("--variants", nargs="+", default=names, choices=names)
    parser.add_argument("--callbacks", nargs="+", type=int, default=list(CALLBACK_COUNTS))
    parser.add_argument("--requests", type=int, default=2000, help="requests per in-process batch")
    parser.add_argument("--repeats", type=int, default=15, help="in-process batches per variant")
    parser.add_argument("--wrk-seconds", type=int, default=3)
    parser.add_argument("--wrk-rounds", type=int, default=2)
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--memory-callbacks", type=int, default=3)
    parser.add_argument(
        "--memory-variants",
        nargs="*",
        choices=names,
        help="variants of the memory check (default: --variants)",
    )
    parser.add_argument(
        "--storm-memory-requests", type=int, default=1_000_000, help="failing requests of the memory check"
    )
    parser.add_argument(
        "--instruction-requests", type=int, default=1000, help="requests counted under valgrind"
    )
    parser.add_argument(
        "--instruction-callbacks", nargs="+", type=int, default=[0, 3], help="callback counts under valgrind"
    )
    parser.add_argument(
        "--server-instruction-requests", type=int, default=500, help="requests to uvicorn under valgrind"
    )
    parser.add_argument(
        "--server-shapes", nargs="+", default=list(server.SHAPES), choices=server.SHAPES,
        help="uvicorn shapes counted: standard is uvloop + httptools (uvicorn[standard]), h11 asyncio + h11",
    )  # fmt: skip
    parser.add_argument("--skip-wrk", action="store_true")
    parser.add_argument("--skip-instructions", action="store_true", help="no valgrind at all")
    parser.add_argument("--skip-servers", action="store_true", help="no uvicorn under valgrind")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-storm", action="store_true", help="no failure storm (nor its memory)")
    parser.add_argument("--skip-fastapi", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the harness, not the code")
    return parser


def _counts(
    args: argparse.Namespace, names: Sequence[str], callbacks: Sequence[int]
) -> dict[Key, float] | None:
    if args.skip_instructions or instructions.available() is None:
        return None
    _progress(f"instructions (valgrind): {' '.join(names)}")
    return instructions.measure(names, callbacks, args.instruction_requests)


def _why_no_counts(args: argparse.Namespace) -> str:
    return "--skip-instructions" if args.skip_instructions else "valgrind is not installed"


def _servers(
    args: argparse.Namespace, names: Sequence[str], callbacks: int, shape: str
) -> tuple[dict[Key, float] | None, str]:
    """Server counts in ``shape``, or None and why not."""
    if args.skip_instructions or args.skip_servers:
        return None, "--skip-instructions" if args.skip_instructions else "--skip-servers"
    if instructions.available() is None:
        return None, "valgrind is not installed"
    unavailable = server.missing(shape)
    if unavailable:
        return None, f"{', '.join(unavailable)} missing"
    _progress(f"uvicorn ({shape}) under valgrind")
    return server_instructions.measure(names, [callbacks], args.server_instruction_requests, shape=shape), ""


def _main_group(args: argparse.Namespace, variants: list[str], lines: list[str]) -> list[Verdict]:
    sdk_floor = floor.measure(max(args.requests, 100))
    _progress("in-process")
    timings = inprocess.run(
        variants, args.callbacks, requests=args.requests, repeats=args.repeats, warmup=args.requests // 4
    )
    load = {}
    if not args.skip_wrk:
        _progress("uvicorn + wrk")
        load = wrk.run(variants, args.callbacks, seconds=args.wrk_seconds, rounds=args.wrk_rounds)
    growth = []
    if not args.skip_memory:
        _progress("memory")
        measured = variants if args.memory_variants is None else args.memory_variants
        growth = [memory.measure(name, args.memory_callbacks, args.memory_requests) for name in measured]
    lines.append(report.table(variants, args.callbacks, timings, load, growth, sdk_floor))
    counted_variants = [name for name in variants if name != PEER]  # slow, and not ours
    counts = _counts(args, counted_variants, args.instruction_callbacks)
    if counts is not None:
        lines += instructions.table(counted_variants, args.instruction_callbacks, counts, timings, BASELINE)
    found = targets.added(counts, timings, BASELINE, _why_no_counts(args))
    verdicts = targets.in_process(found, sdk_floor, BASELINE)
    peer = targets.against_peer(timings, BASELINE, PEER)
    verdicts += [] if peer is None else [peer]
    served = [BASELINE, *(name for name in ("ours-nosdk", "ours-default") if name in variants)]
    for shape in args.server_shapes:
        per_request, why = _servers(args, served, targets.TARGET_CALLBACKS, shape)
        if per_request is not None:
            lines += server_instructions.table(
                served, [targets.TARGET_CALLBACKS], per_request, BASELINE, shape
            )
        if "ours-default" in variants:
            key = ("ours-default", targets.TARGET_CALLBACKS)
            minimum = targets.SERVER_MIN_KEPT[shape]
            verdicts.append(targets.server(per_request, key, BASELINE, shape, minimum, why))
    return verdicts


def _group_in_process(args: argparse.Namespace, group: Group, lines: list[str]) -> targets.Added:
    _progress(f"in-process, {group.title}")
    measure = inprocess.run_isolated if group.isolated else _interleaved
    timings = measure(
        group.names, group.callbacks, requests=args.requests, repeats=args.repeats, warmup=args.requests // 4
    )
    lines += report.group_table(group.title, group.names, group.callbacks, timings)
    counts = _counts(args, group.names, [group.callbacks])
    if counts is not None:
        lines += instructions.table(group.names, [group.callbacks], counts, timings, group.baseline)
    return targets.added(counts, timings, group.baseline, _why_no_counts(args))


def _interleaved(
    names: Sequence[str], callbacks: int, *, requests: int, repeats: int, warmup: int
) -> dict[Key, float]:
    return inprocess.run(names, [callbacks], requests=requests, repeats=repeats, warmup=warmup)


def _storm(args: argparse.Namespace, lines: list[str]) -> list[Verdict]:
    found = _group_in_process(args, STORM, lines)
    ours = STORM.names[1]
    verdicts = targets.storm(found, ours, STORM.callbacks, STORM.baseline)
    # in process only: under uvicorn every failing request logs uvicorn's traceback, in both variants
    if not args.skip_memory:
        _progress(f"memory, {args.storm_memory_requests:,} failing requests")
        growth = memory.measure(ours, STORM.callbacks, args.storm_memory_requests)
        lines += report.memory_table([growth])
        verdicts.append(targets.memory_flat(growth))
    return verdicts


def _fastapi(args: argparse.Namespace, lines: list[str]) -> list[Verdict]:
    found = _group_in_process(args, FASTAPI, lines)
    plain, ours = FASTAPI.names
    verdicts = targets.fastapi(found, ours, FASTAPI.callbacks, plain)
    if "standard" in args.server_shapes:
        per_request, why = _servers(args, FASTAPI.names, FASTAPI.callbacks, "standard")
        if per_request is not None:
            lines += server_instructions.table(
                FASTAPI.names, [FASTAPI.callbacks], per_request, plain, "standard"
            )
        key = (ours, FASTAPI.callbacks)
        verdicts.append(
            targets.server(per_request, key, plain, "standard", targets.FASTAPI_SERVER_MIN_KEPT, why)
        )
    return verdicts


def main(argv: Sequence[str] | None = None) -> str:
    args = _parser().parse_args(argv)
    if args.quick:
        args.requests, args.repeats, args.memory_requests, args.storm_memory_requests = 20, 2, 200, 200
        args.wrk_seconds, args.wrk_rounds = 1, 1
        args.instruction_requests = args.server_instruction_requests = 20
    variants: list[str] = list(args.variants)
    if BASELINE not in variants:
        variants.insert(0, BASELINE)
    lines: list[str] = []
    verdicts = _main_group(args, variants, lines)
    if not args.skip_storm:
        verdicts += _storm(args, lines)
    if not args.skip_fastapi:
        verdicts += _fastapi(args, lines)
    _progress("done")
    text = "\n".join([*lines, *report.targets_section(verdicts)])
    print(text)
    return text


if __name__ == "__main__":
    main()
