"""``mnv2 train``: train or fine-tune. Every flag but ``--out``, ``--recipe`` and ``--resume`` is a ``TrainConfig``
field; ``None`` keeps the recipe's value."""

from __future__ import annotations

import argparse
import math

from mnv2.cli.common import typed_config
from mnv2.cli.flags import add_fields


def add_parser(sub, verb: str | None) -> None:
    p = sub.add_parser("train", help="train or fine-tune (recipes: default, fashion-mnist, paper, modern)")
    p.set_defaults(func=run)
    fields = typed_config(p, verb, "train", "mnv2.engine.config", "flag_fields")
    if fields is None:
        return
    p.add_argument("--out", default=None, help="run directory (config.yaml, best/last checkpoints, metrics, plots)")
    p.add_argument(
        "--recipe",
        default=None,
        help="shipped recipe (default, fashion-mnist, paper, modern, qat) or a YAML file (default: default, or qat)",
    )
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue that run from its last completed epoch")
    add_fields(p, fields(), show_defaults=False)  # TrainConfig's flags, then each task's options


def run(args: argparse.Namespace) -> int:
    from mnv2.engine.config import flag_fields
    from mnv2.engine.loop import run_config, train

    overrides = {f.name: getattr(args, f.name) for f in flag_fields()}
    config, out = run_config(args.out, args.resume, args.recipe, overrides)
    result = train(config, out, resume=bool(args.resume))
    metric = result["metric"]

    def num(v) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"

    summary = (
        f"best {metric} {num(result[f'best_{metric}'])} / last {num(result[f'last_{metric}'])} after "
        f"{result['epochs']} epochs, {result['wall_s'] / 60:.1f} min; best checkpoint {result['best']}"
    )
    if result["diagnosis"]:  # never "done" for a useless model (issue 24, 3)
        print(f"finished, but the best checkpoint is degenerate: {result['diagnosis']} ({summary})")
    else:
        print(f"done: {summary}")
    return 0
