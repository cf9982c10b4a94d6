"""Rough edges of extract and backfill: a symlinked checkpoint without trainer_state.json,
a --tokenizer that does not exist or does not load, records longer than the model's positions."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from tokcal.cli.main import main
from tokcal.jobs.checkpoints import resolve_checkpoints

GOOD = [{"id": "a", "messages": [{"role": "user", "content": "Paper?"},
                                 {"role": "assistant", "content": "\\boxed{Accept}"}]},
        {"id": "b", "instruction": "Other paper?", "output": "\\boxed{Reject}"}]


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_symlinked_checkpoint_takes_its_step_from_the_link_name(tmp_path, tiny_bpe_checkpoint):
    snap = tmp_path / "store" / "snapshot-9f3c2a"  # no trainer_state.json, a name without a step
    shutil.copytree(tiny_bpe_checkpoint, snap)
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint-8").symlink_to(snap, target_is_directory=True)
    real = out / "checkpoint-4"
    shutil.copytree(tiny_bpe_checkpoint, real)
    link = out / "checkpoint-8"  # kept as given (absolute), not resolved to its target
    assert resolve_checkpoints([out]) == [(real.absolute(), 4), (link.absolute(), 8)]
    assert resolve_checkpoints([link]) == [(link.absolute(), 8)]
    # trainer_state.json, where there is one, still decides
    (snap / "trainer_state.json").write_text(json.dumps({"global_step": 12}))
    assert resolve_checkpoints([link]) == [(link.absolute(), 12)]


def test_symlinked_checkpoint_is_backfilled_at_its_step(tmp_path, tiny_bpe_checkpoint):
    from tokcal.jobs.backfill import backfill
    from tokcal.trackers import open_tracker
    from tokcal.trackers.local import read_local_store

    snap = tmp_path / "snapshot-abc"
    shutil.copytree(tiny_bpe_checkpoint, snap)
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint-6").symlink_to(snap, target_is_directory=True)
    data = _write(tmp_path / "eval.jsonl", GOOD)
    with open_tracker("local", local_dir=tmp_path / "store") as run:
        report = backfill([out], data, run, progress=False, device="cpu")
        run_dir = run.describe()["local_dir"]
    assert report.ok and [r.step for r in report.logged] == [6], report.summary()
    assert [e["step"] for e in read_local_store(run_dir)] == [6]


@pytest.mark.parametrize("tokenizer", ["/nonexistent", "./no-such-dir", "a/b/c"])
def test_missing_tokenizer_folder_is_an_error_before_loading(tmp_path, capsys, tiny_bpe_checkpoint, tokenizer):
    data = _write(tmp_path / "eval.jsonl", GOOD)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_bpe_checkpoint, ckpt)
    (ckpt / "model.safetensors").write_bytes(b"not weights")  # loading them would fail differently
    code = main(["extract", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(tmp_path / "o.jsonl"),
                 "--tokenizer", tokenizer])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "tokenizer folder not found" in err and "--tokenizer" in err, err


def test_a_tokenizer_that_does_not_load_fails_before_the_weights(tmp_path, capsys, tiny_bpe_checkpoint):
    data = _write(tmp_path / "eval.jsonl", GOOD)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_bpe_checkpoint, ckpt)
    (ckpt / "model.safetensors").write_bytes(b"not weights")
    empty = tmp_path / "tok"
    empty.mkdir()
    code = main(["extract", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(tmp_path / "o.jsonl"),
                 "--tokenizer", str(empty)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "could not load a tokenizer" in err and "could not load the model" not in err, err


def test_records_longer_than_the_model_positions_are_named_in_one_warning(tmp_path, tiny_bpe_checkpoint):
    from tokcal.core.spec import DecisionSpec
    from tokcal.jobs.extract import score_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_bpe_checkpoint, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["max_position_embeddings"] = 64
    (ckpt / "config.json").write_text(json.dumps(cfg))
    long = {"id": "long", "instruction": "A very long review. " * 40, "output": "\\boxed{Accept}"}
    data = _write(tmp_path / "eval.jsonl", [*GOOD, long])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = score_checkpoint(ckpt, data, DecisionSpec(), progress=False, device="cpu")
    msgs = [str(w.message) for w in caught if "positions" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "1 of 3 records are longer than the model's 64 positions" in msgs[0] and "'long'" in msgs[0], msgs
    assert len(scores) == 3  # scored, not dropped: the warning says so


def test_records_within_the_positions_give_no_warning(tmp_path, tiny_bpe_checkpoint):
    from tokcal.core.spec import DecisionSpec
    from tokcal.jobs.extract import score_checkpoint

    data = _write(tmp_path / "eval.jsonl", GOOD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score_checkpoint(tiny_bpe_checkpoint, data, DecisionSpec(), progress=False, device="cpu")
    assert not [w for w in caught if "positions" in str(w.message)]
