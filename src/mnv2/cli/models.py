"""``mnv2 models``: the registered models, or (``--pretrained``) the published weights."""

from __future__ import annotations

import argparse

from mnv2.cli.common import dumps


def add_parser(sub, verb: str | None) -> None:
    p = sub.add_parser("models", help="list registered models")
    p.add_argument("--json", action="store_true")
    p.add_argument("--pretrained", action="store_true", help="list the published weights (mnv2.create_model weights=)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from mnv2.models import list_models, model_info

    if args.pretrained:
        return _print_pretrained(args.json)
    infos = [model_info(n) for n in list_models()]
    if args.json:
        print(dumps([dataclasses.asdict(i) for i in infos]))
        return 0
    print(f"{'name':<18} {'width':>6}  resolutions with published checkpoints")
    for i in infos:
        print(f"{i.name:<18} {i.width_mult:>6}  {', '.join(map(str, i.resolutions))}")
    return 0


def _print_pretrained(as_json: bool) -> int:
    from mnv2.weights.hub import describe, get_pretrained, list_pretrained

    entries = [describe(get_pretrained(n)) for n in list_pretrained()]
    if as_json:
        print(dumps(entries))
        return 0
    # "top1" is the publisher's own figure; "slim" the TF-slim checkpoint of the same width/resolution (Keras).
    print(f"{'name':<40} {'framework':<12} {'res':>4} {'classes':>7} {'top1':>7} {'slim':>5}  sha256")
    for e in entries:
        m = e["metrics"]
        top1, slim = m.get("top1", "-"), m.get("tf_slim_top1", "-")
        print(
            f"{e['name']:<40} {e['framework']:<12} {e['resolution']:>4} {e['num_classes']:>7} {top1:>7} {slim:>5}  "
            f"{e['sha256'][-1]}"
        )
    return 0
