"""``tokcal train``: LLaMA-Factory training with ``track_decision_probs: true`` in its YAML."""

from __future__ import annotations

import argparse
import json

EXAMPLE = r"""examples:
  # one process (CPU, one GPU)
  tokcal train configs/llamafactory_tiny_cpu.yaml

  # override keys as llamafactory-cli does
  tokcal train train.yaml report_to=mlflow decision_every=2

  # several GPUs, DeepSpeed ZeRO-3: the same YAML through torchrun
  torchrun --nproc_per_node 8 -m tokcal.callbacks.llamafactory configs/llamafactory_qwen2_5_vl_3b_full_sft_ds3.yaml

  # see what LLaMA-Factory gets and what tokcal keeps, without training
  tokcal train train.yaml --dry-run

The YAML is LLaMA-Factory's (stage, model, dataset, template, ...) plus tokcal's keys:
track_decision_probs: true, decision_labels, decision_prefix, decision_bins, decision_backend,
decision_every, decision_<option> (see docs/llamafactory.md). tokcal takes them out, so
LLaMA-Factory's parser never sees them. Needs: pip install -e '.[llamafactory]' in your tokcal clone.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train with LLaMA-Factory, tracking decision probabilities at every evaluation",
        description="Run LLaMA-Factory's run_exp on a training YAML with tokcal's decision tracking callback "
        "(track_decision_probs: true); the YAML's tokcal keys are taken out before LLaMA-Factory parses it.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="LLaMA-Factory training YAML (or JSON)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="KEY=VALUE", help="override keys of the YAML")
    p.add_argument("--dry-run", action="store_true",
                   help="print the LLaMA-Factory arguments and the tokcal options, then stop")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokcal.callbacks.llamafactory import load_config, make_callback, split_config, train
    from tokcal.trackers.base import redact_all

    overrides = [x for x in args.overrides if x != "--dry-run"]
    dry_run = args.dry_run or len(overrides) < len(args.overrides)
    data = load_config(args.config, overrides)
    if dry_run:
        lf_args, options = split_config(data)
        if options is not None:
            options = make_callback(options).settings.to_dict()
        # credentials in a tracking URI (or any value) are shown as ***
        print(json.dumps(redact_all({"llamafactory": lf_args, "tokcal": options}), indent=2, default=str))
        return 0
    train(data)
    return 0
