"""``mnv2 bench speed|memory``: engine speed against the peers, or §5.1's memory; the flags are the two configs'
fields (``mnv2.bench.configs``). ``mnv2 bench`` alone is the speed bench and ``mnv2 bench --memory`` the memory
bench, as they were spelt before the two had names."""

from __future__ import annotations

import argparse

from mnv2.cli.common import clear_status, dumps, status_line
from mnv2.cli.flags import add_flags, flag_name, values_from_args
from mnv2.errors import ConfigError
from mnv2.typed import option_fields

KINDS = ("speed", "memory")


def add_parser(sub, verb: str | None) -> None:
    from mnv2.bench.configs import MemoryBenchConfig, SpeedBenchConfig

    p = sub.add_parser("bench", help="benchmarks: engine speed vs peers (speed, the default) or §5.1 memory")
    p.add_argument("kind", nargs="?", choices=KINDS, default=None, help="speed (default) or memory")
    p.add_argument("--memory", action="store_true", help="the memory bench (as `mnv2 bench memory`)")
    p.add_argument("--json", action="store_true", help="speed: a list of records; memory: one object (best split)")
    speed = {flag_name(f) for f in add_flags(p, SpeedBenchConfig, prefix="speed: ")}
    shared = tuple(f.name for f in option_fields(MemoryBenchConfig) if flag_name(f) in speed)
    add_flags(p, MemoryBenchConfig, prefix="memory: ", skip=shared)
    for action in p._actions:  # one flag, two configs: its help gives both defaults
        memory = next((f for f in option_fields(MemoryBenchConfig) if f.name in shared and action.dest == f.name), None)
        if memory is not None:
            action.help += f"; memory: {memory.metadata['help']} (default {memory.default})"
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnv2.bench.configs import MemoryBenchConfig, SpeedBenchConfig, run_memory, run_speed

    kind = args.kind or ("memory" if args.memory else "speed")
    if args.memory and kind != "memory":
        raise ConfigError("--memory is `mnv2 bench memory`; drop one")
    cls, other = (MemoryBenchConfig, SpeedBenchConfig) if kind == "memory" else (SpeedBenchConfig, MemoryBenchConfig)
    own = {f.name for f in option_fields(cls)}
    wrong = [flag_name(f) for f in option_fields(other) if f.name not in own and getattr(args, f.name) is not None]
    if wrong:
        where = "`mnv2 bench speed`" if kind == "memory" else "`mnv2 bench memory` (`mnv2 bench --memory`)"
        raise ConfigError(f"{', '.join(wrong)}: only for {where}")
    config = cls(**values_from_args(cls, args))
    if kind == "memory":
        document, text = run_memory(config, progress=not args.json)
        print(dumps(document) if args.json else text)
        return 0
    records, table = run_speed(config, progress=status_line(args.json))
    clear_status(args.json)
    print(dumps([r.to_dict() for r in records]) if args.json else table)
    return 0
