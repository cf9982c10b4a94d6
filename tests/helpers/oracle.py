"""Independent oracles for decision probabilities: a plain full forward and softmax."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def independent_probs(model: Any, tok: Any, recs: Sequence[dict]) -> list[tuple[str, int, float, float]]:
    """(id, turn, p_accept, p_reject) by a full forward of each conversation alone, for the
    default spec (Accept/Reject and their lower-case forms after ``\\boxed{``); answers
    without ``\\boxed{`` are skipped."""
    from tokcal.data.records import to_messages

    accept, reject = label_token_sets(tok)  # found in context: the token that starts at the label's character
    out = []
    for r in recs:
        msgs = to_messages(r)
        text = tok.apply_chat_template(msgs, tokenize=False)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
        probs = torch.softmax(logits, dim=-1)
        starts = [s for s, _ in enc["offset_mapping"]]
        turn = 0
        cursor = 0
        answers = [m["content"] for m in msgs if m["role"] == "assistant"]
        for ans in answers:
            at = text.index(ans, cursor)
            cursor = at + len(ans)
            if "\\boxed{" not in ans:
                continue
            c = at + ans.rindex("\\boxed{") + len("\\boxed{")
            j = starts.index(c)
            p = probs[j - 1]
            out.append((r["id"], turn, float(p[list(accept)].sum()), float(p[list(reject)].sum())))
            turn += 1
    return out


def label_token_sets(tok: Any) -> tuple[set[int], set[int]]:
    """The Accept and Reject decision tokens (both cases), found in context by character offset."""
    def token_at(text: str, label: str) -> int:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        c = text.index(label)
        return next(i for i, (s, _) in zip(enc["input_ids"], enc["offset_mapping"]) if s == c)

    return ({token_at("\\boxed{Accept}", "Accept"), token_at("\\boxed{accept}", "accept")},
            {token_at("\\boxed{Reject}", "Reject"), token_at("\\boxed{reject}", "reject")})


def greedy_answer(model: Any, tok: Any, prompt_ids: Sequence[int], max_new: int) -> dict[str, Any]:
    """The model's own answer by a loop of full forwards (argmax each step, up to ``max_new``
    tokens or the end token), and (P(Accept), P(Reject)) at the first step where the decoded
    text so far ends with ``\\boxed{`` (``None`` if it never does)."""
    accept, reject = label_token_sets(tok)
    ids = list(prompt_ids)
    gen: list[int] = []
    found = None
    for _ in range(max_new):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        probs = torch.softmax(logits, dim=-1)
        if found is None and tok.decode(gen).endswith("\\boxed{"):
            found = (float(sum(probs[i] for i in accept)), float(sum(probs[i] for i in reject)))
        nxt = int(torch.argmax(logits))
        gen.append(nxt)
        ids.append(nxt)
        if nxt == tok.eos_token_id:
            break
    return {"text": tok.decode(gen, skip_special_tokens=True), "probs": found, "tokens": gen}
