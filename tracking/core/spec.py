"""The decision spec: which labels, after which prefix, and which tokens stand for them.

Token ids are resolved *in context*: ``prefix + variant`` is tokenised and the decision
token is the first token at which the label variants diverge. Tokenising a bare word and
summing its sub-tokens is wrong as soon as a word splits, so it is never done.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tokcal.errors import TokcalError

DEFAULT_LABELS: tuple[str, ...] = ("Accept", "Reject")
DEFAULT_PREFIX = "\\boxed{"


@dataclass(frozen=True)
class DecisionSpec:
    """What a decision looks like in the model's answer.

    Args:
        labels: ordered labels; the first is the positive class of binary metrics.
        prefix: text right before the label in the answer, e.g. ``\\boxed{``.
        variants: extra surface forms per label (``{"Accept": [" Accept", "ACCEPT"]}``);
            their probabilities are summed into the label's.
        lowercase: also count each label written in lower case (the default plan).

    Example:
        >>> spec = DecisionSpec(labels=("Accept", "Reject"), prefix="\\\\boxed{")
        >>> spec.surface_forms()["Accept"]
        ['Accept', 'accept']
    """

    labels: tuple[str, ...] = DEFAULT_LABELS
    prefix: str = DEFAULT_PREFIX
    variants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    lowercase: bool = True

    def __post_init__(self) -> None:
        labels = tuple(str(x) for x in self.labels)
        if len(labels) < 2:
            raise TokcalError(f"expected at least 2 decision labels, got {list(labels)}")
        if len(set(labels)) != len(labels):
            raise TokcalError(f"expected distinct decision labels, got {list(labels)}")
        if any(not x for x in labels):
            raise TokcalError("expected non-empty decision labels, got an empty string")
        _check_distinct_keys(labels)
        unknown = set(self.variants) - set(labels)
        if unknown:
            raise TokcalError(
                f"variants name labels that are not in the spec: {sorted(unknown)}; "
                f"expected some of {list(labels)}"
            )
        object.__setattr__(self, "labels", labels)
        object.__setattr__(
            self, "variants", {k: tuple(v) for k, v in dict(self.variants).items()}
        )

    @property
    def keys(self) -> list[str]:
        """Metric-key form of each label (lower case), e.g. ``accept``."""
        return [label_key(x) for x in self.labels]

    def surface_forms(self) -> dict[str, list[str]]:
        """Every written form of each label, without duplicates, in a stable order."""
        out: dict[str, list[str]] = {}
        for label in self.labels:
            forms = [label]
            if self.lowercase:
                forms.append(label.lower())
            forms.extend(self.variants.get(label, ()))
            out[label] = list(dict.fromkeys(forms))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["variants"] = {k: list(v) for k, v in self.variants.items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DecisionSpec":
        """Build from a mapping such as a YAML ``spec:`` section; unknown keys are an error."""
        allowed = {"labels", "prefix", "variants", "lowercase"}
        extra = set(data) - allowed
        if extra:
            raise TokcalError(
                f"unknown spec keys {sorted(extra)}; expected some of {sorted(allowed)}"
            )
        kwargs: dict[str, Any] = dict(data)
        if "labels" in kwargs:
            kwargs["labels"] = tuple(kwargs["labels"])
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DecisionSpec":
        """Read the ``spec:`` section of a tokcal YAML (or a file that is only a spec); a file
        with other sections (``tracking:``, ``vllm:``) and no ``spec:`` has the default spec."""
        from tokcal.config import load_yaml

        data = load_yaml(path)
        if "spec" not in data and any(k in data for k in ("tracking", "vllm")):
            return cls()
        return cls.from_dict(data.get("spec", data))

    def resolve(self, tokenizer: Any) -> "ResolvedSpec":
        """Find the decision token ids with ``tokenizer``; see :func:`resolve_spec`."""
        return resolve_spec(self, tokenizer)


def label_key(label: str) -> str:
    """``"Accept"`` -> ``"accept"``; spaces and dashes become underscores."""
    return "".join(c if c.isalnum() else "_" for c in label.strip().lower())


def _check_distinct_keys(labels: Sequence[str]) -> None:
    """Two labels with one metric key (``A+``/``A-``, ``A-B``/``A B``, ``YES``/``Yes``) would
    overwrite each other's scalars (``avg_p_<key>``): an error naming both labels and the key."""
    seen: dict[str, str] = {}
    for label in labels:
        key = label_key(label)
        if key in seen:
            raise TokcalError(
                f"labels {seen[key]!r} and {label!r} both give the metric key {key!r} (avg_p_{key}); "
                "expected labels that differ in letters or digits, not only in case, spaces or punctuation"
            )
        seen[key] = label


@dataclass(frozen=True)
class ResolvedSpec:
    """A spec bound to a tokenizer.

    Attributes:
        spec: the spec it came from.
        token_ids: per label, the decision token ids of its variants (no duplicates).
        context_ids: the tokens shared by every variant before the decision token.
        multi_token: labels whose variants continue after the decision token (their
            probability is an upper bound).
    """

    spec: DecisionSpec
    token_ids: tuple[tuple[int, ...], ...]
    context_ids: tuple[int, ...]
    multi_token: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def all_ids(self) -> list[int]:
        return [t for ids in self.token_ids for t in ids]

    def label_of_token(self) -> dict[int, int]:
        return {t: k for k, ids in enumerate(self.token_ids) for t in ids}

    def anchor_ids(self) -> tuple[int, ...]:
        """The tail of the context that must precede a decision token.

        The first context token is dropped when there are several, since text before the
        prefix can merge with it (`` \\`` vs ``\\``).
        """
        ctx = self.context_ids
        return ctx[1:] if len(ctx) > 1 else ctx


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)


_warned_multi: set[tuple[str, ...]] = set()


def resolve_spec(spec: DecisionSpec, tokenizer: Any) -> ResolvedSpec:
    """Resolve each label's decision tokens in the context of the prefix.

    Tokenise ``prefix + variant`` for every variant; the shared leading tokens are the
    context, and each variant's decision token is its first token after them.

    Raises:
        TokcalError: two labels share a decision token, or a variant is a prefix of
            another label's variant so no token tells them apart.

    Example:
        >>> resolved = DecisionSpec().resolve(tokenizer)  # doctest: +SKIP
        >>> resolved.token_ids  # doctest: +SKIP
        ((16646, 10330), (78413, 46996))
    """
    if tokenizer is None:
        raise TokcalError("expected a tokenizer to resolve decision tokens, got None")
    seqs = [(label, v, _encode(tokenizer, spec.prefix + v))
            for label, variants in spec.surface_forms().items() for v in variants]
    lcp = _shared_length([s for _, _, s in seqs])
    # A decision token must reach past the prefix: with "(" + "A" -> "(A" but "(" + " A" ->
    # "(", " A", the token "(" says nothing about the label.
    prefix_len = len(_decode(tokenizer, _encode(tokenizer, spec.prefix))) if hasattr(tokenizer, "decode") else None
    owner: dict[int, tuple[str, str]] = {}
    per_label: dict[str, list[int]] = {label: [] for label in spec.labels}
    multi: list[str] = []
    for label, v, s in seqs:
        tok = _decision_token(spec, tokenizer, seqs, (label, v, s), lcp, prefix_len)
        _check_not_shared(tokenizer, owner, tok, label, v)
        owner[tok] = (label, v)
        if tok not in per_label[label]:
            per_label[label].append(tok)
        if len(s) > lcp + 1 and label not in multi:
            multi.append(label)
    _warn_multi_token(spec, multi)
    return ResolvedSpec(
        spec=spec,
        token_ids=tuple(tuple(per_label[x]) for x in spec.labels),
        context_ids=tuple(seqs[0][2][:lcp]),
        multi_token=tuple(multi),
    )


def _shared_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences (the shared context)."""
    lcp = min(len(s) for s in seqs)
    for i in range(lcp):
        if len({s[i] for s in seqs}) > 1:
            return i
    return lcp


def _decision_token(spec: DecisionSpec, tokenizer: Any, seqs: Sequence[tuple[str, str, list[int]]],
                    seq: tuple[str, str, list[int]], lcp: int, prefix_len: int | None) -> int:
    """The variant's first token after the shared context, checked to tell it apart."""
    label, v, s = seq
    if len(s) <= lcp:
        other = next((lab for lab, _, t in seqs if lab != label and len(t) > lcp), None)
        other = other or next(lab for lab, _, _ in seqs if lab != label)
        raise TokcalError(
            f"labels {label!r} and {other!r} cannot be told apart: {v!r} after "
            f"{spec.prefix!r} is a prefix of {other!r}; choose labels whose first "
            "token differs"
        )
    tok = s[lcp]
    if prefix_len is not None and len(_decode(tokenizer, s[: lcp + 1])) <= prefix_len:
        raise TokcalError(
            f"variant {v!r} of label {label!r} has no decision token of its own: its "
            f"first differing token {tokenizer.convert_ids_to_tokens(tok)!r} (id {tok}) "
            f"ends inside the prefix {spec.prefix!r}; drop the variant or change the prefix"
        )
    return tok


def _check_not_shared(tokenizer: Any, owner: dict[int, tuple[str, str]], tok: int, label: str, v: str) -> None:
    if tok in owner and owner[tok][0] != label:
        other_label, other_v = owner[tok]
        piece = tokenizer.convert_ids_to_tokens(tok)
        raise TokcalError(
            f"labels {other_label!r} ({other_v!r}) and {label!r} ({v!r}) map to the "
            f"same decision token {piece!r} (id {tok}); use labels whose first token "
            "differs"
        )


def _warn_multi_token(spec: DecisionSpec, multi: list[str]) -> None:
    """Once per set of labels: a label spanning several tokens is decided by its first."""
    key = tuple(multi)
    if multi and key not in _warned_multi:
        _warned_multi.add(key)
        warnings.warn(
            f"decision labels {multi} span several tokens after {spec.prefix!r}; the "
            "first token decides, so their probabilities are upper bounds",
            stacklevel=3,
        )


def spec_from_args(
    labels: Sequence[str] | None = None,
    prefix: str | None = None,
    base: DecisionSpec | None = None,
) -> DecisionSpec:
    """Override a base spec with command-line values that were given."""
    base = base or DecisionSpec()
    d = base.to_dict()
    if labels:
        d["labels"] = list(labels)
        d["variants"] = {k: v for k, v in d["variants"].items() if k in labels}
    if prefix is not None:
        d["prefix"] = prefix
    return DecisionSpec.from_dict(d)
