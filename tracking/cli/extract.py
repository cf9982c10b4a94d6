"""``tokcal extract``: score one checkpoint on an eval file."""

from __future__ import annotations

import argparse

from tokcal.cli.common import (
    add_data_args,
    add_engine_args,
    add_model_args,
    engine_kwargs,
    add_spec_args,
    format_table,
    load_kwargs,
    quiet_output,
    source_from,
    spec_from,
)

EXAMPLE = r"""example:
  tokcal extract --checkpoint out/checkpoint-500 --data eval.jsonl \
      --output decisions.jsonl --metrics metrics.json --labels Accept Reject --prefix '\boxed{'

  # page images (image parts or an 'images' column): scored with the checkpoint's processor
  tokcal extract --checkpoint out/checkpoint-500 --data pages.jsonl --image-dir pages/ \
      --max-pixels 401408 --output decisions.jsonl --metrics metrics.json

  # with vLLM, and the model's own answers beside the teacher-forced scores (gen_ metrics)
  tokcal extract --checkpoint out/checkpoint-500 --data eval.jsonl --output decisions.jsonl \
      --engine vllm --vllm-arg max_model_len=8192 --mode generate --max-new-tokens 256

  # the eval set of a LLaMA-Factory run, tokenised by LLaMA-Factory as in training
  tokcal extract --checkpoint out/checkpoint-500 --llamafactory-config train.yaml --output decisions.jsonl

Each output line: {"sample_id", "p_accept", "p_reject", "gt", "pred", "correct", "mass", "confidence"};
with --mode generate also "gen_written", "gen_p_accept", ..., "gen_pred", "gen_correct", "gen_text".
When no answer holds a decision token for the labels (say --labels Yes No on Accept/Reject
answers), it stops before loading the model, quoting an answer and the tokens it looked for.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="score a checkpoint: per-decision probabilities and calibration metrics",
        description="Score a checkpoint on an eval set: the probability of each decision label at the "
        "answer position, written one JSON line per decision, plus the calibration metrics.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder (safetensors)")
    p.add_argument("--output", required=True, metavar="OUT.jsonl", help="per-decision JSON lines")
    p.add_argument("--metrics", metavar="OUT.json", help="write the scalar metrics (and bins) here")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors: no progress bars, no messages from the model libraries, "
                        "no metrics table (they are in --output and --metrics)")
    add_data_args(p)
    add_spec_args(p)
    add_model_args(p)
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokcal.core.metrics import bin_edges
    from tokcal.io import check_outputs, write_json, write_jsonl
    from tokcal.jobs.extract import score_checkpoint

    spec = spec_from(args)
    bin_edges(args.bins)
    scoring = engine_kwargs(args)
    check_outputs({"--output": args.output, "--metrics": args.metrics},
                  [args.data, args.llamafactory_config, args.chat_template, args.config])
    with quiet_output(args.quiet):
        source = source_from(args)
        scores = score_checkpoint(args.checkpoint, source, spec, max_tokens=args.max_tokens,
                                  progress=not args.quiet, **scoring, **load_kwargs(args))
        metrics = scores.metrics(n_bins=args.bins)
    write_jsonl(args.output, scores.records())
    if args.metrics:
        write_json(args.metrics, {"scalars": metrics.scalars, **metrics.to_dict(),
                                  "data": {"checkpoint": str(args.checkpoint), **source.metadata()},
                                  "scoring": {"engine": scoring["engine"], "mode": scoring["mode"],
                                              "max_new_tokens": scoring["max_new_tokens"]
                                              if scoring["mode"] == "generate" else None}})
    if args.quiet:
        return 0
    print(format_table(metrics.scalars))
    for note in metrics.notes:
        print(f"note: {note}")
    return 0
