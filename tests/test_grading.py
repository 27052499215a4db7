"""Free-form grading (kinject.eval.grading): SQuAD's EM and F1, contains with numbers and dates,
abstention, and the headline grade on answerable and unanswerable questions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kinject.eval.grading import abstains, contains, dates, exact_match, grade, normalize, token_f1


def test_squad_normalisation_em_and_f1() -> None:
    assert normalize("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert token_f1("Eiffel", ["Eiffel Tower"]) == 2 * 1 * 0.5 / 1.5
    assert token_f1("Paris", ["Eiffel Tower", "Paris"]) == 1.0  # the best alias
    assert token_f1("", ["x"]) == 0.0


def test_contains_words_numbers_versions_and_dates() -> None:
    assert contains("It was started by Ian Murdock in 1993.", ["Ian Murdock"]) == 1.0
    assert contains("It has 17 levels.", ["7"]) == 0.0  # not inside a longer number
    assert contains("It weighs 1,200 grams.", ["1200"]) == 1.0
    assert contains("in the 0.14 release", ["0.14.0"]) == 1.0
    assert contains("in 0.14.1", ["0.14.0"]) == 0.0
    assert contains("Released on March 5, 2026.", ["5 March 2026"]) == 1.0
    assert contains("Released on 2026-03-05.", ["5th of March 2026"]) == 1.0
    assert contains("Released on 2026-03-06.", ["5 March 2026"]) == 0.0
    assert contains("use --strict", ["--strict"]) == 1.0
    assert contains("anything", [""]) == 0.0
    assert dates("1 Sept. 2025 and Dec 31, 1999") == {(2025, 9, 1), (1999, 12, 31)}
    assert contains("5 levels", ["five"]) == 1.0 and contains("They are divided into five levels.", ["5"]) == 1.0
    assert contains("fifteen of them", ["5"]) == 0.0 and contains("someone said so", ["1"]) == 0.0
    assert contains("The default is 3, but one can change it.", ["1"]) == 0.0  # "one" is mostly a pronoun
    assert contains("twenty-five levels", ["5"]) == 0.0 and contains("five hundred threads", ["5"]) == 0.0
    assert contains("There is one level.", ["one"]) == 1.0 and contains("There is 1 level.", ["one"]) == 1.0


def test_abstention_and_hallucination() -> None:
    assert abstains("Not in the knowledge base.") and abstains("I don't know.") and abstains("  ")
    assert not abstains("Ian Murdock [1].") and abstains("Unknown.")
    assert not abstains("It is a tier 3 target, loongarch64-unknown-linux-gnu.")  # a word inside a name
    right = grade("Ian Murdock started it.", ["Ian Murdock"])
    assert right.correct and right.contains == 1.0 and not right.hallucinated
    declined = grade("I don't know.", ["Ian Murdock"])
    assert not declined.correct and declined.abstained
    made_up = grade("It costs 40 euros.", [], answerable=False)
    assert made_up.hallucinated and not made_up.correct
    assert grade("Not in the knowledge base.", [], answerable=False).correct


@given(st.text(max_size=80), st.lists(st.text(max_size=20), max_size=3))
def test_grading_never_raises_on_any_text(answer: str, refs: list[str]) -> None:
    g = grade(answer, refs)
    assert 0.0 <= g.f1 <= 1.0 and g.em in (0.0, 1.0) and g.contains in (0.0, 1.0)


def test_one_spelling_per_number_for_grading_and_ask() -> None:
    from kinject.core.numbers import canonical_number

    assert canonical_number("1,200") == canonical_number("1200.0") == "1200"
    assert canonical_number("05") == "5" and canonical_number("14.50") == "14.5"
    assert canonical_number("1.93.0") == "1.93.0" and canonical_number("7:30") == "7:30"  # one thing, as written
    assert canonical_number("0.14.0", trim_versions=True) == "0.14" == canonical_number("0.14", trim_versions=True)


@given(st.text())
def test_number_spelling_never_raises(token: str) -> None:
    from kinject.core.numbers import canonical_number

    assert isinstance(canonical_number(token), str) and isinstance(canonical_number(token, True), str)
