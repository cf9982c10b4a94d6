"""A real LLaMA-Factory vision-language SFT run (``template: qwen2_vl``, a tiny random
Qwen2.5-VL, a sharegpt data set with an ``images`` column) through ``tokcal train``, then
``tokcal extract``/``backfill --llamafactory-config`` on its checkpoints, and LLaMA-Factory's
own data path (``get_dataset`` with the multimodal plugin, its collator) against tokcal's
reading of the same records, token for token and pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.llamafactory.conftest import (
    VL_CONFIG,
    close,
    lf_args,
    local_store,
    needs_llamafactory,
    run_tokcal_train,
    tiny_overrides,
)

pytestmark = [needs_llamafactory, pytest.mark.slow]

STEPS = [2, 4]  # eval_steps 2, max_steps 4 in configs/llamafactory_tiny_vl_cpu.yaml
N_EVAL = 8  # val_size 0.2 of 40 records


@pytest.fixture(scope="module")
def run(lf_tiny_vl: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lf-vl") / "out"
    run_tokcal_train(lf_tiny_vl, out, ["report_to=none", "decision_log_samples=true"], config=VL_CONFIG)
    return out


@pytest.fixture(scope="module")
def store(run: Path) -> tuple[Path, list[dict]]:
    return local_store(run)


def test_live_metrics_at_every_eval_step(run: Path, store) -> None:
    _, evals = store
    assert [e["step"] for e in evals] == STEPS
    for e in evals:
        assert e["scalars"]["eval_decision_samples"] == N_EVAL and e["scalars"]["eval_decision_missing"] == 0
    hist = json.loads((run / "trainer_state.json").read_text())["log_history"]
    assert sorted(x["step"] for x in hist if "eval_decision_ece" in x) == STEPS
    assert (run / "checkpoint-2" / "processor_config.json").is_file()  # LLaMA-Factory saves the processor


def test_extract_equals_callback(lf_tiny_vl: Path, run: Path, store, tmp_path: Path) -> None:
    """Step 2 here; the backfill below checks both steps."""
    from tokcal.cli.main import main

    step = 2
    run_dir, evals = store
    logged = next(e for e in evals if e["step"] == step)
    out, metrics = tmp_path / "d.jsonl", tmp_path / "m.json"
    rc = main(["extract", "--checkpoint", str(run / f"checkpoint-{step}"), *lf_args(lf_tiny_vl, run, VL_CONFIG),
               "--output", str(out), "--metrics", str(metrics), "--bins", "10"])
    assert rc == 0
    got = json.loads(metrics.read_text())
    bad = {k: (v, logged["scalars"][k]) for k, v in got["scalars"].items() if not close(v, logged["scalars"][k])}
    assert set(got["scalars"]) == set(logged["scalars"]) and not bad
    assert got["data"]["image_max_pixels"] == 262144
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    cb = {r["sample_id"]: r for r in map(json.loads, (run_dir / logged["samples_file"]).read_text().splitlines())}
    assert len(rows) == len(cb) == N_EVAL
    for r in rows:
        c = cb[r["sample_id"]]
        assert (r["gt"], r["pred"]) == (c["gt"], c["pred"])
        assert close(r["p_accept"], c["p_accept"], 1e-7) and close(r["p_reject"], c["p_reject"], 1e-7)


def test_backfill_into_the_training_run_equals_live(lf_tiny_vl: Path, run: Path, store, capsys) -> None:
    from tokcal.cli.main import main
    from tokcal.trackers.local import read_local_store

    rc = main(["backfill", str(run / "checkpoint-*"), *lf_args(lf_tiny_vl, run, VL_CONFIG), "--quiet", "--force"])
    assert rc == 0 and "2 logged, 0 skipped, 0 failed" in capsys.readouterr().out
    entries = read_local_store(store[0])
    live = {e["step"]: e["scalars"] for e in entries if not e.get("tags")}
    back = {e["step"]: e["scalars"] for e in entries if e.get("tags", {}).get("tokcal_backfill") == "true"}
    assert sorted(back) == STEPS
    for s in STEPS:
        bad = {k: (v, live[s][k]) for k, v in back[s].items() if not close(v, live[s][k])}
        assert not bad, s


def lf_reference(tiny: Path, run: Path) -> tuple[object, dict]:
    """LLaMA-Factory's own eval dataset (get_dataset, train split tokenised too) and modules."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    from tokcal.callbacks.llamafactory import load_config

    cfg = load_config(VL_CONFIG, tiny_overrides(tiny, run))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("decision_") and k != "track_decision_probs"}
    cfg["output_dir"] = str(run.parent / "get_dataset")
    model_args, data_args, training_args, _, _ = get_train_args(cfg)
    tok = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tok["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tok)
    return module["eval_dataset"], {"template": template, **tok}


def test_data_paths_agree_token_for_token(lf_tiny_vl: Path, tmp_path: Path) -> None:
    """tokcal's eval set equals get_dataset's; tokcal's own reading of the same records
    (ImageDataFile, --image-dir = media_dir) has the same token ids and pixel values."""
    import torch
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask
    from transformers import AutoModelForImageTextToText

    from tokcal.callbacks.llamafactory_data import load_eval_set
    from tokcal.core.positions import IGNORE_INDEX
    from tokcal.data.sources import ImageDataFile

    run = tmp_path / "out"  # no training needed: only the data pipeline
    ref, mods = lf_reference(lf_tiny_vl, run)
    eval_set = load_eval_set(VL_CONFIG, tiny_overrides(lf_tiny_vl, run))
    assert (eval_set.template, len(eval_set)) == ("qwen2_vl", N_EVAL) and eval_set.multimodal
    assert [list(r["input_ids"]) for r in ref] == [e.input_ids for e in eval_set.examples]
    assert [list(r["labels"]) for r in ref] == [e.labels for e in eval_set.examples]
    assert [list(r["images"]) for r in ref] == [e.extra["images"] for e in eval_set.examples]

    # The same records read by tokcal itself, with the model's processor.
    data_dir = lf_tiny_vl / "data"
    recs = json.loads((data_dir / "pages.json").read_text())
    by_images = {tuple(str(data_dir / p) for p in r["images"]): i for i, r in enumerate(recs)}
    picked = [recs[by_images[tuple(e.extra["images"])]] for e in eval_set.examples]
    sub = run.parent / "picked.jsonl"
    sub.write_text("".join(json.dumps(r) + "\n" for r in picked))
    source = ImageDataFile(sub, image_dir=data_dir)
    from tokcal.jobs.checkpoints import load_processor

    processor = load_processor(lf_tiny_vl / "model")
    ours = source.examples(processor)
    for e, o in zip(eval_set.examples, ours):
        assert o.input_ids == e.input_ids
        # Both label the answer; LLaMA-Factory's qwen2_vl template also labels the "\n" after <|im_end|>.
        lf_lab = [t for t in e.labels if t != IGNORE_INDEX]
        assert [t for t in o.labels if t != IGNORE_INDEX] == lf_lab[: len(lf_lab) - 1]
    model = AutoModelForImageTextToText.from_pretrained(str(lf_tiny_vl / "model"))
    collator = SFTDataCollatorWith4DAttentionMask(model=model, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX,
                                                  compute_dtype=torch.float32, **mods)
    feats = [{"input_ids": list(r["input_ids"]), "attention_mask": list(r["attention_mask"]),
              "labels": list(r["labels"]), "images": list(r["images"]), "videos": [], "audios": []}
             for r in [ref[i] for i in range(3)]]
    lf_batch = collator(feats)
    our_batch = source.batches(ours[:3], processor, max_tokens=10**6)[0]
    order = [int(i) for i in our_batch["sample_index"]]  # length-sorted
    per_row = torch.split(our_batch["pixel_values"], [int(g.prod()) for g in our_batch["image_grid_thw"]])
    lf_rows = torch.split(lf_batch["pixel_values"], [int(g.prod()) for g in lf_batch["image_grid_thw"]])
    counts = [len(recs[by_images[tuple(eval_set.examples[i].extra["images"])]]["images"]) for i in range(3)]
    starts = [sum(counts[:i]) for i in range(3)]
    ours_by_row = {}
    k = 0
    for i in order:
        ours_by_row[i] = per_row[k:k + counts[i]]
        k += counts[i]
    for i in range(3):
        for a, b in zip(ours_by_row[i], lf_rows[starts[i]:starts[i] + counts[i]]):
            assert torch.equal(a, b)
