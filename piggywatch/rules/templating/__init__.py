"""Prometheus alert templating: Go text/template with Prometheus's template functions.

Labels and annotations of alerting rules are Go templates such as
``{{ $labels.instance }} has {{ $value | humanizePercentage }} in use``. This package
parses and executes them the way Prometheus 2.42 does, down to how numbers print
(``format_go_float``) and the text of errors, so a rule file renders the same here as in
Prometheus and ``promtool test rules``.
"""

from ._alert import (
    QueryFunc,
    QuerySample,
    TemplateError,
    TemplateInputs,
    check_template,
    render,
    render_or_error,
    template_inputs,
)
from ._gofmt import format_go_float
from ._prometheus import FUNCTION_NAMES
from ._queries import template_queries

__all__ = [
    "FUNCTION_NAMES",
    "QueryFunc",
    "QuerySample",
    "TemplateError",
    "TemplateInputs",
    "check_template",
    "format_go_float",
    "render",
    "render_or_error",
    "template_inputs",
    "template_queries",
]
