"""A refinement method is a value: one parse, one format, and no substring decides what runs."""

from __future__ import annotations

import pytest

from iterative_label_refinement.core.methods import Method, format_method, parse_method
from iterative_label_refinement.core.settings import ConfigError

# Every spelling the refinement CLIs and the scripts write (prefixes cor? + ora?, then kind + parameter).
NAMES = {
    "ilr0.15": Method("ilr", max_replace=0.15),
    "orailr0.15": Method("ilr", oracle=True, max_replace=0.15),
    "corilr0.15": Method("ilr", correct_start=True, max_replace=0.15),
    "cororailr0.15": Method("ilr", oracle=True, correct_start=True, max_replace=0.15),
    "ilr1": Method("ilr", max_replace=1),
    "ilr1.0": Method("ilr", max_replace=1.0),
    "naive0.15": Method("naive", max_replace=0.15),
    "cornaive0.1": Method("naive", correct_start=True, max_replace=0.1),
    "naive0.15rd": Method("naive", max_replace=0.15, redraw_each_round=True),
    "cornaive0.1rd": Method("naive", correct_start=True, max_replace=0.1, redraw_each_round=True),
    "dpo0.10.15": Method("dpo", beta=0.1, subsample=0.15),
    "oradpo0.10.15": Method("dpo", oracle=True, beta=0.1, subsample=0.15),
    "cororadpo0.10.15": Method("dpo", oracle=True, correct_start=True, beta=0.1, subsample=0.15),
    "dpo0.11.0": Method("dpo", beta=0.1, subsample=1.0),
    "dpo0.11": Method("dpo", beta=0.1, subsample=1),
    "dpo10.5": Method("dpo", beta=1, subsample=0.5),
    "dpo1.00.5": Method("dpo", beta=1.0, subsample=0.5),
    "oradpo0.10.5nt": Method("dpo", oracle=True, beta=0.1, subsample=0.5, neutral_ties=True),
}


@pytest.mark.parametrize("name, method", NAMES.items())
def test_parse_and_format_are_inverse(name, method):
    assert parse_method(name) == method
    assert format_method(method) == str(method) == name
    assert format_method(parse_method(name)) == name


def test_values_answer_what_the_runs_and_the_report_ask():
    method = parse_method("cororadpo0.10.15")
    assert (method.kind, method.oracle, method.correct_start, method.is_dpo) == ("dpo", True, True, True)
    assert (method.beta, method.subsample, method.max_replace) == (0.1, 0.15, None)
    ilr = parse_method("cornaive0.15")
    assert (ilr.kind, ilr.oracle, ilr.correct_start, ilr.is_dpo, ilr.max_replace) == ("naive", False, True, False, 0.15)


@pytest.mark.parametrize(
    "name",
    ["dpo_something", "ilrx", "ilr", "dpo", "xilr0.1", "ilr0.1x", "oracorilr0.1", "dpo0.1", "ilr0.150", "ilr.15",
     "ilr1.5", "ilr0", "dpo00.15", "naive-0.1", "oranaive0.1", "ilr0.1nt", "", "weak", "corweak",
     "ilr0.1rd", "orailr0.1rd", "naive0.1rdrd", "naiverd", "dpo0.10.15rd"],
)  # fmt: skip
def test_names_that_spell_no_method_are_one_line_errors(name):
    """The substring traps: `dpo_something` and `ilrx` contain a kind but are no method."""
    with pytest.raises(ConfigError) as error:
        parse_method(name)
    assert "\n" not in str(error.value) and str(error.value).startswith(f"method {name!r}")


def test_invalid_values_are_refused_where_they_are_built():
    with pytest.raises(ConfigError, match=r"^--max_replace must be in \(0, 1\], got 1.5$"):
        Method("ilr", max_replace=1.5)
    with pytest.raises(ConfigError, match=r"^--subsample must be in \(0, 1\], got 0$"):
        Method("dpo", beta=0.1, subsample=0)
    with pytest.raises(ConfigError, match="--beta must be a positive number"):
        Method("dpo", beta=0, subsample=0.5)
    with pytest.raises(ConfigError, match="neutral_oracle_ties changes oracle scores only"):
        Method("dpo", beta=0.1, subsample=0.5, neutral_ties=True)
    with pytest.raises(ConfigError, match="naive takes no feedback, so no oracle"):
        Method("naive", oracle=True, max_replace=0.1)
    with pytest.raises(ConfigError, match="^--redraw_each_round belongs to naive, not ilr"):
        Method("ilr", max_replace=0.1, redraw_each_round=True)
    with pytest.raises(ConfigError, match="^--redraw_each_round belongs to naive, not dpo"):
        Method("dpo", beta=0.1, subsample=0.5, redraw_each_round=True)
    with pytest.raises(ConfigError, match="Unknown method kind 'sft'"):
        Method("sft", max_replace=0.1)
