"""Careless input, as a class: every bad option value, input encoding and output path gets a
one-line error before any scoring, and nothing is written. Property-based (Hypothesis) for
record shapes and option values: a clean TokcalError or a correct result, never a traceback."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokcal.cli.main import main
from tokcal.data.records import to_messages
from tokcal.data.sources import DataFile
from tokcal.errors import TokcalError

GOOD = {"messages": [{"role": "user", "content": "Paper?"}, {"role": "assistant", "content": "\\boxed{Accept}"}]}


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _extract(tmp_path: Path, ckpt: Path | str, data: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "out.jsonl"
    code = main(["extract", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(out), *extra])
    return code, out


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokcal ") and "error:" in err, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


# ------------------------------------------------------------------------ outputs vs inputs


def test_output_equal_to_data_is_refused_and_data_kept(tmp_path, capsys, tiny_bpe_checkpoint):
    data = _write(tmp_path / "eval.jsonl", [GOOD])
    before = data.read_bytes()
    code = main(["extract", "--checkpoint", str(tiny_bpe_checkpoint), "--data", str(data), "--output", str(data)])
    assert code == 2
    _one_line_error(capsys, "--output", "is also an input")
    assert data.read_bytes() == before


def test_metrics_equal_to_output_is_refused(tmp_path, capsys, tiny_bpe_checkpoint):
    data = _write(tmp_path / "eval.jsonl", [GOOD])
    out = tmp_path / "out.jsonl"
    code = main(["extract", "--checkpoint", str(tiny_bpe_checkpoint), "--data", str(data), "--output", str(out),
                 "--metrics", str(tmp_path / "." / "out.jsonl")])
    assert code == 2
    _one_line_error(capsys, "--metrics", "--output", "same file")
    assert not out.exists()


def test_output_in_a_place_that_cannot_be_a_folder(tmp_path, capsys, tiny_bpe_checkpoint):
    data = _write(tmp_path / "eval.jsonl", [GOOD])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["extract", "--checkpoint", str(tiny_bpe_checkpoint), "--data", str(data),
                 "--output", str(blocker / "sub" / "out.jsonl")])
    assert code == 2
    _one_line_error(capsys, "is a file")


def test_report_output_equal_to_a_source_is_refused(tmp_path, capsys):
    src = _write(tmp_path / "checkpoint-10.decisions.jsonl", [
        {"sample_id": 0, "p_accept": 0.9, "p_reject": 0.05, "gt": "Accept", "pred": "Accept"}])
    before = src.read_bytes()
    code = main(["report", str(src), "-o", str(src)])
    assert code == 2
    _one_line_error(capsys, "--output", "is also an input")
    assert src.read_bytes() == before


def test_backfill_output_dir_under_a_file_is_refused_before_scoring(tmp_path, capsys, tiny_bpe_checkpoint):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(tiny_bpe_checkpoint, out / "checkpoint-5")
    data = _write(tmp_path / "eval.jsonl", [GOOD])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from tokcal.trackers import open_tracker

    with open_tracker("local", local_dir=tmp_path / "store") as run:
        run_id = run.run_id
    code = main(["backfill", str(out), "--data", str(data), "--backend", "local", "--run-id", run_id,
                 "--local-dir", str(tmp_path / "store"), "--output-dir", str(blocker / "sub")])
    assert code == 2
    _one_line_error(capsys, "--output-dir", "is a file")
    assert not (out / "checkpoint-5" / "tokcal_decisions.jsonl").exists() and not (out / "tokcal").exists()


# ------------------------------------------------------------------------------ encodings


def test_latin1_data_file_says_how_to_reencode(tmp_path, capsys, tiny_bpe_checkpoint):
    data = tmp_path / "eval.jsonl"
    data.write_bytes(json.dumps({"instruction": "Résumé", "output": "\\boxed{Accept}"},
                                ensure_ascii=False).encode("latin-1") + b"\n")
    code, out = _extract(tmp_path, tiny_bpe_checkpoint, data)
    assert code == 2
    _one_line_error(capsys, "not UTF-8", "iconv")
    assert not out.exists()


def test_utf16_data_file_is_named(tmp_path, capsys, tiny_bpe_checkpoint):
    data = tmp_path / "eval.jsonl"
    data.write_bytes((json.dumps(GOOD) + "\n").encode("utf-16"))
    code, out = _extract(tmp_path, tiny_bpe_checkpoint, data)
    assert code == 2
    _one_line_error(capsys, "UTF-16")


def test_utf8_with_a_byte_order_mark_is_read(tmp_path):
    data = tmp_path / "eval.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n").encode("utf-8"))
    source = DataFile(data)
    source.check()
    assert source.records == [GOOD]


def test_latin1_config_yaml_is_one_line(tmp_path, capsys, tiny_bpe_checkpoint):
    data = _write(tmp_path / "eval.jsonl", [GOOD])
    cfg = tmp_path / "tokcal.yaml"
    cfg.write_bytes("spec:\n  labels: [Accepté, Rejeté]\n".encode("latin-1"))
    code, _ = _extract(tmp_path, tiny_bpe_checkpoint, data, "--config", str(cfg))
    assert code == 2
    _one_line_error(capsys, "not UTF-8")


# --------------------------------------------------------------------------- option values


@pytest.mark.parametrize("extra, needle", [
    (["--max-tokens", "0"], "--max-tokens >= 1"),
    (["--max-tokens", "-5"], "--max-tokens >= 1"),
    (["--max-samples", "0"], "max_samples >= 1"),
    (["--bins", "0"], "n_bins"),
    (["--device", "gpu"], "--device cpu, cuda or cuda:N"),
    (["--device", "cuda:0"], "no CUDA GPU"),
    (["--chat-template", "missing.jinja"], "chat template not found"),
])
def test_bad_option_values(tmp_path, capsys, tiny_bpe_checkpoint, extra, needle):
    data = _write(tmp_path / "eval.jsonl", [GOOD])
    code, out = _extract(tmp_path, tiny_bpe_checkpoint, data, *extra)
    assert code == 2
    _one_line_error(capsys, needle)
    assert not out.exists()


def test_broken_chat_template_fails_before_loading(tmp_path, capsys):
    data = _write(tmp_path / "eval.jsonl", [GOOD])
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text("{% for m in messages %}{{ m.content }}", encoding="utf-8")
    # The checkpoint does not exist: the template error must come first, without loading.
    code, out = _extract(tmp_path, tmp_path / "no-such-checkpoint", data, "--chat-template", str(tmpl))
    assert code == 2
    _one_line_error(capsys, "not a valid Jinja template", "line 1")
    assert not out.exists()


def test_empty_chat_template_file(tmp_path, capsys):
    data = _write(tmp_path / "eval.jsonl", [GOOD])
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text("  \n", encoding="utf-8")
    code, _ = _extract(tmp_path, tmp_path / "nope", data, "--chat-template", str(tmpl))
    assert code == 2
    _one_line_error(capsys, "is empty")


# ------------------------------------------------------------------------- property-based

_text = st.text(alphabet=string.ascii_letters + " {}\\<>", max_size=12)
# Any JSON value of the wrong type for a field: null, numbers, booleans, arrays, objects.
_wrong = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.booleans(),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.just("k"), st.integers(), max_size=1))
_part = st.fixed_dictionaries({"type": st.one_of(st.sampled_from(["text", "image", "video"]), _wrong)},
                              optional={"text": st.one_of(_text, _wrong)})
_content = st.one_of(_text, _wrong, st.lists(st.one_of(_part, _wrong), max_size=3))
_message = st.dictionaries(st.sampled_from(["role", "content", "from", "value"]),
                           st.one_of(st.sampled_from(["user", "assistant", "system", "gpt", "human", "bot"]),
                                     _content), max_size=3)
# A well-formed record (answer included), then one field set to a value of the wrong type.
_answer = st.sampled_from(["\\boxed{Accept}", "\\boxed{Reject}"])
_good = st.one_of(
    st.builds(lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
              _text, _answer),
    st.builds(lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
              _text, _answer),
    st.builds(lambda q, a: {"instruction": q, "output": a}, _text, _answer),
)
_FIELDS = [("id",), ("messages",), ("messages", 0), ("messages", 0, "role"), ("messages", 0, "content"),
           ("messages", 1, "content"), ("conversations",), ("conversations", 0, "from"),
           ("conversations", 1, "value"), ("instruction",), ("input",), ("output",), ("system",), ("history",)]


def _set(record: dict, path: tuple, value) -> dict:
    """``record`` with the field at ``path`` set to ``value`` (where the record has that place)."""
    out = json.loads(json.dumps(record))
    node = out
    for key in path[:-1]:
        if isinstance(node, dict) and key in node or isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return out
    if isinstance(node, dict) or isinstance(node, list) and path[-1] < len(node):
        node[path[-1]] = value
    return out


_broken = st.builds(_set, _good, st.sampled_from(_FIELDS), _wrong)
_record = st.one_of(
    st.dictionaries(st.sampled_from(["messages", "conversations", "instruction", "input", "output", "system",
                                     "history", "id", "other"]),
                    st.one_of(_text, _wrong, st.lists(_message, max_size=4),
                              st.lists(st.lists(_text, max_size=3), max_size=2)), max_size=5),
    st.fixed_dictionaries({"messages": st.lists(_message, max_size=4)}),
    st.fixed_dictionaries({"conversations": st.lists(_message, max_size=4)}),
    _broken,
)
_value = st.one_of(_record, st.integers(), _text, st.none(), st.lists(st.integers(), max_size=2))


def _check_messages(messages: list) -> None:
    """What a correct result of reading a record looks like."""
    assert isinstance(messages, list) and messages
    assert all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
    assert any(m["role"] == "assistant" for m in messages)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_value, max_size=4), as_array=st.booleans(), max_samples=st.one_of(
    st.none(), st.integers(min_value=-3, max_value=5)))
def test_random_records_read_cleanly_or_fail_cleanly(tmp_path_factory, small_bpe_tok, values, as_array,
                                                     max_samples):
    """A file either fails its check with one line, or every record renders with a real chat
    template and tokenises (what happens after the model loads): never a traceback then."""
    path = tmp_path_factory.mktemp("prop") / "eval.json"
    if as_array:
        path.write_text(json.dumps(values), encoding="utf-8")
    else:
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(v) + "\n" for v in values), encoding="utf-8")
    try:
        source = DataFile(path, max_samples=max_samples)
        source.check()
    except TokcalError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    assert source.records, "a file that reads cleanly has records"
    for i, r in enumerate(source.records):
        _check_messages(to_messages(r, f"record {i}"))
    try:
        examples = source.examples(small_bpe_tok)
    except TokcalError as exc:  # only what no check can know before the tokenizer (e.g. the template)
        assert str(exc) and "\n" not in str(exc).strip()
        return
    assert len(examples) == len(source.records)
    assert all(len(e.input_ids) == len(e.labels) > 0 for e in examples)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(good=st.lists(_good, min_size=0, max_size=2), broken=_broken, at=st.integers(0, 2))
def test_a_field_of_the_wrong_type_is_one_line_before_any_model(tmp_path_factory, small_bpe_tok, good, broken, at):
    """One record with one field set to null or another wrong type, among good ones: the
    check (before any model loads) names it in one line, or it renders and tokenises."""
    records = good[:at] + [broken] + good[at:]
    path = _write(tmp_path_factory.mktemp("field") / "eval.jsonl", records)
    source = DataFile(path)
    try:
        source.check()
    except TokcalError as exc:
        msg = str(exc)
        assert "\n" not in msg.strip() and f"line {records.index(broken) + 1}" in msg, msg
        return
    examples = source.examples(small_bpe_tok)  # no model needed; must not raise now
    assert len(examples) == len(records)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(max_tokens=st.one_of(st.integers(min_value=-10, max_value=4096), st.sampled_from(["x", "1.5", ""])),
       bins=st.one_of(st.integers(min_value=-2, max_value=40), st.just("many")),
       max_samples=st.one_of(st.none(), st.integers(min_value=-2, max_value=3)),
       device=st.one_of(st.none(), st.sampled_from(["cpu", "cuda", "cuda:3", "tpu", "cpu:0", ""])),
       dtype=st.one_of(st.none(), st.sampled_from(["float32", "bfloat16", "int8"])))
def test_random_option_values_give_a_result_or_one_line(tmp_path_factory, capsys, tiny_bpe_checkpoint,
                                                       max_tokens, bins, max_samples, device, dtype):
    tmp = tmp_path_factory.mktemp("opts")
    data = _write(tmp / "eval.jsonl", [GOOD, {"instruction": "Other paper?", "output": "\\boxed{Reject}"}])
    argv = ["extract", "--checkpoint", str(tiny_bpe_checkpoint), "--data", str(data),
            "--output", str(tmp / "out.jsonl"), "--max-tokens", str(max_tokens), "--bins", str(bins)]
    for flag, v in (("--max-samples", max_samples), ("--device", device), ("--dtype", dtype)):
        if v is not None:
            argv += [flag, str(v)]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage error (a non-integer, a bad choice)
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code == 0:
        rows = [json.loads(x) for x in (tmp / "out.jsonl").read_text().splitlines()]
        assert len(rows) == min(2, max_samples or 2)
        assert all(0 <= r["p_accept"] + r["p_reject"] <= 1 + 1e-9 for r in rows)
    else:
        assert code == 2
        assert len(captured.err.strip().splitlines()) == 1, captured.err
        assert not (tmp / "out.jsonl").exists()
