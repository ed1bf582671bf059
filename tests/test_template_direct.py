"""Templates that are only text, ``{{ $labels.x }}`` and ``{{ $value }}`` (most alert
templates) render by joining their parts, exactly as the interpreter renders them."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from piggywatch.rules.templating import render, render_or_error

# The interpreter's rendering of the same template: an action printing "" is nothing the
# direct path takes, and adds nothing to the text.
THROUGH_THE_INTERPRETER = '{{ "" }}'

text = st.text(alphabet=st.sampled_from(list("ab {}-\n\t$.é😀|%")), max_size=6).filter(
    lambda t: "{{" not in t and not t.endswith("{"))
action = st.builds(
    lambda left, body, right: f"{{{{{left}{body}{right}}}}}",
    st.sampled_from(["", " ", "- ", "  "]),
    st.sampled_from(["$labels.target", "$labels.instance", "$labels.missing", "$labels.a_b",
                     "$value", "$labels.target2",
                     # Not for the direct path: the interpreter must render these.
                     "$labels", "$", "$value.x", "$labels.target.x", ".Value",
                     "$labels.target | len", "$externalURL", "$x := 1"]),
    st.sampled_from(["", " ", " -", "\t"]),
)
templates = st.lists(st.one_of(text, action), max_size=6).map("".join)
label_sets = st.dictionaries(st.sampled_from(["target", "instance", "a_b", "target2"]),
                             st.text(max_size=5), max_size=4)
values = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1e21, 1e-7, 123456789.0, math.nan]))


@settings(max_examples=500, deadline=None)
@given(template=templates, labels=label_sets, value=values)
def test_joining_the_parts_renders_what_the_interpreter_renders(
        template: str, labels: dict[str, str], value: float) -> None:
    direct = render_or_error(template, labels=labels, value=value)
    interpreted = render_or_error(template + THROUGH_THE_INTERPRETER, labels=labels,
                                  value=value)
    assert direct == interpreted


def test_what_the_direct_path_renders() -> None:
    labels = {"target": "main", "instance": "db-1:5432"}
    assert render("critical", labels=labels, value=1.0) == "critical"
    assert render("", labels=labels, value=1.0) == ""
    assert render("{{ $labels.target }} {{ $labels.instance }} is high", labels=labels,
                  value=1.0) == "main db-1:5432 is high"
    assert render("{{$labels.nope}}|{{ $value }}", labels=labels, value=0.25) == "|0.25"
    assert render("a {{- $value -}} b", labels=labels, value=1e21) == "a1e+21b"
    assert render("{{ $value }}", labels=labels, value=math.inf) == "+Inf"
