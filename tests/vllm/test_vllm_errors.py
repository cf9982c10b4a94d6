"""What the vLLM engine refuses, in one line and before any model loads (no engine starts
here, so the command runs in this process): options vLLM does not know, prompts longer than
max_model_len, architectures vLLM cannot load, adapters, and --device."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.vllm.conftest import needs_vllm

pytestmark = needs_vllm


@pytest.fixture
def extract(trained: dict, tmp_path: Path, capsys, monkeypatch):
    import tokcal.jobs.checkpoints as checkpoints
    from tokcal.cli.main import main

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(checkpoints, "load_checkpoint", no_loading)

    def run(ckpt: Path, *extra: str) -> str:
        code = main(["extract", "--checkpoint", str(ckpt), "--data", str(trained["eval"]),
                     "--output", str(tmp_path / "d.jsonl"), "--engine", "vllm", "--quiet", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert len(err.splitlines()) == 1, err
        assert not (tmp_path / "d.jsonl").exists()
        return err

    return run


def test_unknown_option(trained: dict, extract):
    err = extract(trained["checkpoints"][0], "--vllm-arg", "tensor_paralel_size=2")
    assert "unknown vLLM option 'tensor_paralel_size'" in err


def test_record_longer_than_max_model_len(trained: dict, extract):
    err = extract(trained["checkpoints"][0], "--vllm-arg", "max_model_len=16")
    assert "more than vLLM's max_model_len of 16" in err and "--vllm-arg max_model_len=N" in err


def test_architecture_vllm_cannot_load(trained: dict, tmp_path: Path, extract):
    ckpt = tmp_path / "checkpoint-1"
    shutil.copytree(trained["checkpoints"][0], ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["ReviewScorerForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(config))
    err = extract(ckpt)
    assert "architecture ReviewScorerForCausalLM is not one vLLM supports; use --engine hf" in err


def test_device_is_vllm_s_choice(trained: dict, extract):
    err = extract(trained["checkpoints"][0], "--device", "cpu")
    assert "--device does not apply to --engine vllm" in err


def test_adapter_folder(trained: dict, tmp_path: Path):
    from tokcal.data.sources import as_source
    from tokcal.engines import get_engine
    from tokcal.errors import TokcalError

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(trained["checkpoints"][0])}))
    with pytest.raises(TokcalError, match="LoRA/PEFT adapter; --engine vllm scores full checkpoints"):
        get_engine("vllm").check(adapter, None, source=as_source(trained["eval"]))
