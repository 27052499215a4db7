"""The free-form judge (kinject.eval.judge): rubric replies parsed, verdicts cached by content (a rerun
asks nothing), a garbage reply retried then left unjudged, a dead endpoint one clear error, and
agreement with the string grade measured as share and Cohen's kappa."""

from __future__ import annotations

import math

import pytest

from kinject.core.errors import KinjectError
from kinject.eval.judge import Case, agreement, judge, parse_verdict
from kinject.lm.generators import GeneratorStats
from kinject.synth.jobs import SynthCache


class Scripted:
    """A generator protocol double that replies from a script: the judge's control flow (cache,
    retries, a dead endpoint) is what is under test here, not a model's judgement."""

    id, batch_size = "scripted", 2

    def __init__(self, replies) -> None:
        self.replies, self.calls, self.stats = replies, 0, GeneratorStats()

    def complete(self, prompts, *, seed, max_tokens, temperature):
        self.calls += 1
        return [self.replies(p[-1]["content"], seed) for p in prompts]

    def close(self) -> None:
        pass


def test_verdicts_are_parsed_cached_and_retried() -> None:
    assert parse_verdict("**Correct**.") == "correct" and parse_verdict(" incorrect, because") == "incorrect"
    assert parse_verdict("I think so") is None and parse_verdict("correctly") is None
    cases = [Case("Who?", ("Ada",), "Ada"), Case("Who?", ("Ada",), "Bob"), Case("Why?", (), "Because")]

    def reply(prompt: str, seed: int) -> str | None:
        if "Because" in prompt:
            return "hmm"  # garbage on every attempt
        return "correct" if "Answer: Ada" in prompt else "Incorrect."

    cache = SynthCache(None)
    gen = Scripted(reply)
    assert judge(cases, gen, cache) == ["correct", "incorrect", None]
    calls = gen.calls
    assert judge(cases[:2], gen, cache) == ["correct", "incorrect"] and gen.calls == calls  # all from the cache
    with pytest.raises(KinjectError, match="no reply"):
        judge([Case("Q?", ("x",), "y")], Scripted(lambda p, s: None), cache)


def test_agreement_share_and_kappa() -> None:
    a = agreement(["correct", "incorrect", "correct", None], [True, False, False, True])
    assert a["n"] == 3 and math.isclose(a["agreement"], 2 / 3)
    # judge correct 2/3, contains 1/3: chance agreement 2/9 + 2/9 = 4/9, kappa (2/3 - 4/9) / (5/9) = 0.4
    assert math.isclose(a["kappa"], 0.4)
    assert agreement(["correct", "incorrect"], [True, False])["kappa"] == 1.0
    assert agreement([None], [True])["n"] == 0
