"""Alert templates render exactly as Prometheus 2.42 renders them.

Every expected string in the tables below was printed by promtool (Go's text/template
with Prometheus's template functions) for the same template and data, so these tests pin
PiggyWatch to Prometheus's output byte for byte. test_promtool_agrees_with_our_rendering
repeats the comparison live when promtool is installed.
"""

from __future__ import annotations

import decimal
import math
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from piggywatch.rules.templating import (
    FUNCTION_NAMES,
    QuerySample,
    TemplateError,
    check_template,
    format_go_float,
    render,
    render_or_error,
)

NAN = float("nan")
INF = float("inf")
INSTANCE = {"instance": "db1.example.com:5432", "job": "pg"}
EXTERNAL_LABELS = {"cluster": "eu-1"}
EXTERNAL_URL = "https://prometheus.example.com/prom"
APPLICATIONS = (("api", 42.0), ("worker", 7.0), ("cron", 1.0))
SERIES: dict[str, list[QuerySample]] = {
    "up": [QuerySample({"__name__": "up", **INSTANCE}, 1.0)],
    "pg_connections_by_application": [
        QuerySample({"__name__": "pg_connections_by_application", "application_name": a}, v)
        for a, v in APPLICATIONS
    ],
    "topk(3, pg_connections_by_application)": [
        QuerySample({"application_name": a}, v) for a, v in APPLICATIONS
    ],
}


def fake_query(expr: str) -> Sequence[QuerySample]:
    """The series promtool's test storage holds in the tables' scenario."""
    return SERIES.get(expr, [])


def expand(template: str, value: float = 0.85) -> str:
    """Render like the alert "A" on db1 in the tables' scenario."""
    return render_or_error(
        template,
        labels=INSTANCE,
        value=value,
        query=fake_query,
        external_labels=EXTERNAL_LABELS,
        external_url=EXTERNAL_URL,
        alert_name="A",
    )


# Cases whose expected text promtool printed (see the module docstring).
VALUE_TEMPLATE = "{{ $value }}|{{ .Value }}|{{ printf \"%v\" $value }}"
VALUE_CASES = [
    (0.85, "0.85|0.85|0.85"),
    (100.0, "100|100|100"),
    (1000000.0, "1e+06|1e+06|1e+06"),
    (1.5e-07, "1.5e-07|1.5e-07|1.5e-07"),
    (123456789.0, "1.23456789e+08|1.23456789e+08|1.23456789e+08"),
    (1234567.0, "1.234567e+06|1.234567e+06|1.234567e+06"),
    (100000.0, "100000|100000|100000"),
    (1e-05, "1e-05|1e-05|1e-05"),
    (0.000123, "0.000123|0.000123|0.000123"),
    (0.0001, "0.0001|0.0001|0.0001"),
    (1e+21, "1e+21|1e+21|1e+21"),
    (NAN, "NaN|NaN|NaN"),
    (INF, "+Inf|+Inf|+Inf"),
    (-INF, "-Inf|-Inf|-Inf"),
    (-0.0, "-0|-0|-0"),
    (0.0, "0|0|0"),
    (-5.0, "-5|-5|-5"),
    (3661.0, "3661|3661|3661"),
    (1536.0, "1536|1536|1536"),
    (0.1234, "0.1234|0.1234|0.1234"),
    (5e-324, "5e-324|5e-324|5e-324"),
    (
        1.7976931348623157e+308,
        "1.7976931348623157e+308|1.7976931348623157e+308|1.7976931348623157e+308",
    ),
    (2.5, "2.5|2.5|2.5"),
    (33.333333333333336, "33.333333333333336|33.333333333333336|33.333333333333336"),
]

HUMANIZE_TEMPLATE = (
    "{{ humanize $value }}|{{ humanize1024 $value }}|{{ humanizeDuration $value }}|"
    "{{ humanizePercentage $value }}"
)
HUMANIZE_CASES = [
    (0.85, "850m|0.85|850ms|85%"),
    (1234567.0, "1.235M|1.177Mi|14d 6h 56m 7s|1.235e+08%"),
    (1e-05, "10u|1e-05|10us|0.001%"),
    (123456789.0, "123.5M|117.7Mi|1428d 21h 33m 9s|1.235e+10%"),
    (0.000123, "123u|0.000123|123us|0.0123%"),
    (3661.0, "3.661k|3.575ki|1h 1m 1s|3.661e+05%"),
    (0.1234, "123.4m|0.1234|123.4ms|12.34%"),
    (1536.0, "1.536k|1.5ki|25m 36s|1.536e+05%"),
    (0.0, "0|0|0s|0%"),
    (-0.0, "-0|-0|-0s|-0%"),
    (NAN, "NaN|NaN|NaN|NaN%"),
    (INF, "+Inf|+Inf|+Inf|+Inf%"),
    (-INF, "-Inf|-Inf|-Inf|-Inf%"),
    (-1234.5, "-1.234k|-1.206ki|-20m 34s|-1.234e+05%"),
    (999.95, "1000|1000|16m 39s|1e+05%"),
    (1e+30, "1e+06Y|8.272e+05Yi|-106751991167300d -15h -30m -8s|1e+32%"),
    (1e-30, "1e-06y|1e-30|1e-06ys|1e-28%"),
    (1.0, "1|1|1s|100%"),
    (0.5, "500m|0.5|500ms|50%"),
    (1023.99, "1.024k|1024|17m 3s|1.024e+05%"),
    (86399.9, "86.4k|84.37ki|23h 59m 59s|8.64e+06%"),
    (90061.7, "90.06k|87.95ki|1d 1h 1m 1s|9.006e+06%"),
    (59.999, "60|60|60s|6000%"),
    (1e+19, "10E|8.674Ei|-106751991167300d -15h -30m -8s|1e+21%"),
    (-3661.5, "-3.662k|-3.576ki|-1h 1m 1s|-3.662e+05%"),
]

HUMANIZE_EXTRA_CASES = [
    (
        (
            "{{ humanize \"1.5e3\" }}|{{ humanize 2048 }}|{{ humanize1024 \""
            "2048\" }}|{{ humanizeDuration \"90\" }}|{{ humanizePercentage \""
            "0.5\" }}"
        ),
        0.85,
        "1.5k|2.048k|2ki|1m 30s|50%",
    ),
    (
        "{{ humanize \"abc\" }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <huma"
            "nize \"abc\">: error calling humanize: strconv.ParseFloat: par"
            "sing \"abc\": invalid syntax>"
        ),
    ),
    (
        "{{ humanize true }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <huma"
            "nize true>: error calling humanize: can't convert bool to fl"
            "oat>"
        ),
    ),
]

TIMESTAMP_TEMPLATE = "{{ humanizeTimestamp $value }}"
TIMESTAMP_CASES = [
    (0.0, "1970-01-01 00:00:00 +0000 UTC"),
    (1.5, "1970-01-01 00:00:01.5 +0000 UTC"),
    (-1.5, "1969-12-31 23:59:58.5 +0000 UTC"),
    (1700000000.0, "2023-11-14 22:13:20 +0000 UTC"),
    (1700000000.123456, "2023-11-14 22:13:20.123 +0000 UTC"),
    (
        10000000000.0,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <huma"
            "nizeTimestamp $value>: error calling humanizeTimestamp: 1e+1"
            "0 cannot be represented as a nanoseconds timestamp since it "
            "overflows int64>"
        ),
    ),
    (NAN, "NaN"),
    (INF, "+Inf"),
]

TIME_CASES = [
    (
        (
            "{{ toTime 1700000000.5 }}|{{ (toTime 1700000000).Format \"200"
            "6-01-02T15:04:05Z07:00 Mon Jan _2 3:04PM\" }}|{{ (toTime 1700"
            "000000.25).Format \"15:04:05.000\" }}|{{ (toTime 1700000000).U"
            "nix }}|{{ (toTime 1700000000).Weekday }}|{{ (toTime 17000000"
            "00).Month }}|{{ (toTime 1700000000).YearDay }}"
        ),
        0.85,
        (
            "2023-11-14 22:13:20.5 +0000 UTC|2023-11-14T22:13:20Z Tue Nov"
            " 14 10:13PM|22:13:20.249|1700000000|Tuesday|November|318"
        ),
    ),
    (
        "{{ toTime \"NaN\" }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <toTi"
            "me \"NaN\">: error calling toTime: value is NaN or Inf>"
        ),
    ),
]

PRINTF_CASES = [
    (
        (
            "{{ printf \"%.2f\" $value }}|{{ printf \"%5.1f|%-8.3f|%08.3f|%+"
            ".2e|%g|%G|%.3g\" $value $value $value $value $value $value $v"
            "alue }}"
        ),
        1234.5678,
        "1234.57|1234.6|1234.568|1234.568|+1.23e+03|1234.5678|1234.5678|1.23e+03",
    ),
    (
        (
            "{{ printf \"%d|%5d|%-5d|%05d|%+d|%x|%X|%o|%b|%c|%q|%U\" 42 42 "
            "42 42 42 255 255 8 5 65 65 65 }}"
        ),
        0.85,
        "42|   42|42   |00042|+42|ff|FF|10|101|A|'A'|U+0041",
    ),
    (
        (
            "{{ printf \"%s|%10s|%-10s|%.3s|%q|%x|% x\" \"hello\" \"hello\" \"he"
            "llo\" \"hello\" \"hello\" \"hi\" \"hi\" }}"
        ),
        0.85,
        "hello|     hello|hello     |hel|\"hello\"|6869|68 69",
    ),
    (
        (
            "{{ printf \"%v %v %v %v %v\" 1 2.5 \"s\" true nil }}|{{ printf \""
            "%T %T %T %T\" 1 2.5 \"s\" $labels }}"
        ),
        0.85,
        "1 2.5 s true <nil>|int float64 string map[string]string",
    ),
    (
        (
            "{{ printf \"%d%%\" 50 }}|{{ printf \"%e\" 1234.5678 }}|{{ printf"
            " \"%x\" 3.5 }}|{{ printf \"%[2]s-%[1]s\" \"a\" \"b\" }}|{{ printf \"%"
            "*d|\" 6 7 }}"
        ),
        0.85,
        "50%|1.234568e+03|0x1.cp+01|b-a|     7|",
    ),
    (
        (
            "{{ printf \"%d\" $value }}|{{ printf \"%s\" 3 }}|{{ printf \"%d %"
            "d\" 1 }}|{{ printf \"%d\" 1 2 }}|{{ printf \"%z\" 1 }}|{{ printf "
            "\"%\" }}"
        ),
        0.85,
        "%!d(float64=0.85)|%!s(int=3)|1 %!d(MISSING)|1%!(EXTRA int=2)|%!z(int=1)|%!(NOVERB)",
    ),
    (
        (
            "{{ print 1 2 \"a\" \"b\" 3 nil }}|{{ println \"x\" 1 }}|{{ $labels"
            " }}|{{ print $labels }}|{{ printf \"%+v\" (query \"up\" | first)"
            " }}"
        ),
        0.85,
        (
            "1 2ab3 <nil>|x 1\n|map[instance:db1.example.com:5432 job:pg]|"
            "map[instance:db1.example.com:5432 job:pg]|&{Labels:map[__nam"
            "e__:up instance:db1.example.com:5432 job:pg] Value:1}"
        ),
    ),
]

CONTROL_CASES = [
    (
        "{{ if gt $value 0.9 }}critical{{ else if gt $value 0.8 }}high{{ else }}ok{{ end }}",
        0.95,
        "critical",
    ),
    (
        "{{ if gt $value 0.9 }}critical{{ else if gt $value 0.8 }}high{{ else }}ok{{ end }}",
        0.85,
        "high",
    ),
    (
        "{{ if gt $value 0.9 }}critical{{ else if gt $value 0.8 }}high{{ else }}ok{{ end }}",
        0.5,
        "ok",
    ),
    (
        (
            "{{ if $labels.nope }}set{{ else }}unset{{ end }}|{{ if and ("
            "gt $value 0.5) (lt $value 1.0) }}in{{ end }}|{{ if or (eq $l"
            "abels.job \"x\") (eq $labels.job \"pg\") }}pg{{ end }}|{{ if not"
            " (eq $labels.job \"pg\") }}no{{ else }}yes{{ end }}"
        ),
        0.85,
        "unset|in|pg|yes",
    ),
    (
        (
            "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}|{{ "
            "range $labels }}[{{ . }}]{{ end }}|{{ range $i, $s := sortBy"
            "Label \"application_name\" (query \"pg_connections_by_applicati"
            "on\") }}{{ $i }}:{{ $s.Labels.application_name }} {{ end }}"
        ),
        0.85,
        "instance=db1.example.com:5432;job=pg;|[db1.example.com:5432][pg]|0:api 1:cron 2:worker ",
    ),
    (
        (
            "{{ with query \"topk(3, pg_connections_by_application)\" }}{{ "
            "range . }}{{ .Labels.application_name }}={{ .Value }} {{ end"
            " }}{{ end }}"
        ),
        0.85,
        "api=42 worker=7 cron=1 ",
    ),
    (
        (
            "{{ range query \"absent_metric\" }}x{{ else }}no data{{ end }}"
            "|{{ with query \"absent_metric\" }}x{{ else }}none{{ end }}|{{"
            " with $labels.job }}job={{ . }}{{ end }}"
        ),
        0.85,
        "no data|none|job=pg",
    ),
    (
        (
            "{{ range $k, $v := $labels }}{{ if eq $k \"job\" }}{{ break }}"
            "{{ end }}{{ $k }};{{ end }}|{{ range $k, $v := $labels }}{{ "
            "if eq $k \"instance\" }}{{ continue }}{{ end }}{{ $k }};{{ end"
            " }}"
        ),
        0.85,
        "instance;|job;",
    ),
    (
        (
            "{{ $x := 1 }}{{ $x = 2 }}{{ $x }}{{ if true }}{{ $x = 3 }}{{"
            " $y := 4 }}{{ $y }}{{ end }}{{ $x }}|{{ with $n := 5 }}{{ $n"
            " }}{{ . }}{{ end }}"
        ),
        0.85,
        "243|55",
    ),
    (
        (
            "{{ define \"who\" }}{{ .Labels.instance }}{{ end }}{{ template"
            " \"who\" . }}|{{ block \"b\" $value }}<{{ . }}>{{ end }}|{{ temp"
            "late \"who\" }}"
        ),
        0.85,
        "db1.example.com:5432|<0.85>|<no value>",
    ),
    (
        "a  {{- 1 -}}  b {{- /* comment */ -}} c {{/* c2 */}}d\n  {{- \" e \" }}\n",
        0.85,
        "a1bc d e \n",
    ),
    (
        (
            "{{ $value | humanize | printf \"%s units\" }}|{{ $labels.insta"
            "nce | stripPort | toUpper }}|{{ \"x\" | printf \"%s-%s\" \"a\" }}"
        ),
        0.85,
        "850m units|DB1.EXAMPLE.COM|a-x",
    ),
    (
        "{{ $ | printf \"%T\" }}|{{ $.Labels.job }}|{{ . }}",
        0.85,
        (
            "struct { Labels map[string]string; ExternalLabels map[string"
            "]string; ExternalURL string; Value float64 }|pg|{map[instanc"
            "e:db1.example.com:5432 job:pg] map[cluster:eu-1] https://pro"
            "metheus.example.com/prom 0.85}"
        ),
    ),
]

COMPARISON_CASES = [
    (
        (
            "{{ eq 1 1 }} {{ eq 1 2 3 1 }} {{ ne \"a\" \"b\" }} {{ lt \"a\" \"b\""
            " }} {{ le 2 2 }} {{ gt 2.5 1.5 }} {{ ge 1 2 }} {{ eq nil nil"
            " }}"
        ),
        0.85,
        "true true true true true true false true",
    ),
    ("{{ gt $value 0.9 }} {{ lt $value 0.9 }} {{ eq $value 0.85 }}", 0.85, "false true true"),
    ("{{ gt $value 1.0 }} {{ lt $value 1.0 }} {{ eq $value $value }}", NAN, "true false false"),
    (
        "{{ gt $value 1 }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <gt $"
            "value 1>: error calling gt: incompatible types for compariso"
            "n>"
        ),
    ),
    (
        "{{ eq $labels.job 1 }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <eq $"
            "labels.job 1>: error calling eq: incompatible types for comp"
            "arison>"
        ),
    ),
    (
        "{{ lt true false }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <lt t"
            "rue false>: error calling lt: invalid type for comparison>"
        ),
    ),
    (
        (
            "{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 \"\" \"x\" }} {{ or 0 \"\" }"
            "} {{ not 0 }} {{ not \"x\" }} {{ and false (first (query \"abse"
            "nt_metric\")) }}"
        ),
        0.85,
        "0 2 x  true false false",
    ),
]

STRING_CASES = [
    (
        (
            "{{ title \"hello wORLD o'neil foo-bar x_y 9am\" }}|{{ toUpper "
            "\"straße db1\" }}|{{ toLower \"ÀB İX\" }}"
        ),
        0.85,
        "Hello WORLD O'Neil Foo-Bar X_y 9am|STRAßE DB1|àb ix",
    ),
    (
        (
            "{{ match \"^db[0-9]+\" $labels.instance }}|{{ match \"(?i)^PG$\""
            " $labels.job }}|{{ match \"x$\" \"x\\n\" }}"
        ),
        0.85,
        "true|true|false",
    ),
    (
        (
            "{{ reReplaceAll \"(.*):.*\" \"$1\" $labels.instance }}|{{ reRepl"
            "aceAll \"x*\" \"-\" \"abxd\" }}|{{ reReplaceAll \"(a)(b)?\" \"[$1|$2|"
            "${1}x|$1x|$$]\" \"ab a\" }}|{{ reReplaceAll \"(?P<host>[^.]+)\\\\."
            ".*\" \"$host\" \"db1.example.com\" }}"
        ),
        0.85,
        "db1.example.com|-a-b-d-|[a|b|ax||$] [a||ax||$]|db1",
    ),
    (
        "{{ reReplaceAll \"(\" \"\" \"x\" }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <reRe"
            "placeAll \"(\" \"\" \"x\">: error calling reReplaceAll: regexp: Co"
            "mpile(`(`): error parsing regexp: missing closing ): `(`>"
        ),
    ),
    (
        "{{ match \"a**\" \"x\" }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <matc"
            "h \"a**\" \"x\">: error calling match: error parsing regexp: inv"
            "alid nested repetition operator: `**`>"
        ),
    ),
    (
        (
            "{{ stripPort $labels.instance }}|{{ stripPort \"[::1]:9090\" }"
            "}|{{ stripPort \"db1\" }}|{{ stripPort \"a:b:c\" }}|{{ stripDoma"
            "in $labels.instance }}|{{ stripDomain \"db1.example.com\" }}|{"
            "{ stripDomain \"10.0.0.1:5432\" }}|{{ stripDomain \"[2001:db8::"
            "1]:80\" }}"
        ),
        0.85,
        "db1.example.com|::1|db1|a:b:c|db1:5432|db1|10.0.0.1:5432|[2001:db8::1]:80",
    ),
    (
        (
            "{{ html \"<a href='x'>&\\\"\" }}|{{ js \"<a href='x'>&=\\\\é\\u0001\""
            " }}|{{ urlquery \"a b&c/d~é\" }}|{{ safeHtml \"<b>\" }}|{{ html "
            "1 2 }}"
        ),
        0.85,
        (
            "&lt;a href=&#39;x&#39;&gt;&amp;&#34;|\\u003Ca href\\u003D\\'x\\'"
            "\\u003E\\u0026\\u003D\\\\é\\u0001|a+b%26c%2Fd~%C3%A9|<b>|1 2"
        ),
    ),
    (
        (
            "{{ graphLink \"rate(http_requests_total{code=~\\\"5..\\\"}[5m]) >"
            " 0.1\" }}|{{ tableLink \"up\" }}"
        ),
        0.85,
        (
            "/graph?g0.expr=rate%28http_requests_total%7Bcode%3D~%225..%2"
            "2%7D%5B5m%5D%29+%3E+0.1&g0.tab=0|/graph?g0.expr=up&g0.tab=1"
        ),
    ),
    (
        (
            "{{ parseDuration \"1h30m\" }}|{{ parseDuration \"1y2w3d4h5m6s7m"
            "s\" }}|{{ parseDuration \"0\" }}|{{ parseDuration \"90s\" | human"
            "izeDuration }}"
        ),
        0.85,
        "5400|3.3019506007e+07|0|1m 30s",
    ),
    (
        "{{ parseDuration \"1.5h\" }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <pars"
            "eDuration \"1.5h\">: error calling parseDuration: not a valid "
            "duration string: \"1.5h\">"
        ),
    ),
    (
        (
            "{{ $externalLabels.cluster }}|{{ .ExternalLabels }}|{{ $exte"
            "rnalURL }}|{{ .ExternalURL }}"
        ),
        0.85,
        (
            "eu-1|map[cluster:eu-1]|https://prometheus.example.com/prom|h"
            "ttps://prometheus.example.com/prom"
        ),
    ),
]

QUERY_CASES = [
    (
        (
            "{{ query \"up\" | first | value }}|{{ query \"up\" | first | lab"
            "el \"job\" }}|{{ with query \"up\" }}{{ . | first | value | huma"
            "nize }}{{ end }}|{{ (query \"up\" | first).Labels.instance }}|"
            "{{ query \"up\" | first }}"
        ),
        0.85,
        "1|pg|1|db1.example.com:5432|{map[__name__:up instance:db1.example.com:5432 job:pg] 1}",
    ),
    (
        (
            "{{ range sortByLabel \"application_name\" (query \"pg_connectio"
            "ns_by_application\") }}{{ .Labels.application_name }}:{{ .Val"
            "ue }} {{ end }}|{{ len (query \"pg_connections_by_application"
            "\") }}"
        ),
        0.85,
        "api:42 cron:1 worker:7 |3",
    ),
    (
        "{{ query \"absent_metric\" | first | value }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:139: executing \"__alert_A\" at <firs"
            "t>: error calling first: first() called on vector with no el"
            "ements>"
        ),
    ),
    (
        (
            "{{ (args 1 \"two\" 3.5).arg1 }}|{{ args 1 \"two\" }}|{{ (args 1)"
            ".arg7 }}|{{ index (args \"a\" \"b\") \"arg1\" }}"
        ),
        0.85,
        "two|map[arg0:1 arg1:two]|<no value>|b",
    ),
    (
        (
            "{{ index $labels \"job\" }}|{{ index $labels \"nope\" }}|{{ len "
            "$labels }}|{{ len \"héllo\" }}|{{ slice \"abcdef\" 1 3 }}|{{ ind"
            "ex \"abc\" 1 }}|{{ strvalue (query \"up\" | first) }}"
        ),
        0.85,
        "pg||2|6|bc|98|",
    ),
    (
        "{{ index (query \"up\") 5 }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <inde"
            "x (query \"up\") 5>: error calling index: index out of range: "
            "5>"
        ),
    ),
]

ERROR_CASES = [
    (
        "{{ .Foo }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <.Foo"
            ">: can't evaluate field Foo in type struct { Labels map[stri"
            "ng]string; ExternalLabels map[string]string; ExternalURL str"
            "ing; Value float64 }>"
        ),
    ),
    (
        "{{ $value.x }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:121: executing \"__alert_A\" at <$val"
            "ue.x>: can't evaluate field x in type float64>"
        ),
    ),
    (
        "line one\n  {{ humanize \"x\" }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:2:5: executing \"__alert_A\" at <humani"
            "ze \"x\">: error calling humanize: strconv.ParseFloat: parsing"
            " \"x\": invalid syntax>"
        ),
    ),
    (
        "{{ template \"missing\" }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:124: executing \"__alert_A\" at <{{te"
            "mplate \"missing\"}}>: template \"missing\" not defined>"
        ),
    ),
    (
        "{{ nil }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:115: executing \"__alert_A\" at <nil>"
            ": nil is not a command>"
        ),
    ),
    (
        "{{ \"a\" | safeHtml | toUpper }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:132: executing \"__alert_A\" at <toUp"
            "per>: wrong type for value; expected string; got template.HT"
            "ML>"
        ),
    ),
    (
        "{{ 1 | humanize 2 }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:119: executing \"__alert_A\" at <huma"
            "nize>: wrong number of args for humanize: want 1 got 2>"
        ),
    ),
    (
        "{{ range 5 }}{{ end }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:121: executing \"__alert_A\" at <5>: "
            "range can't iterate over 5>"
        ),
    ),
    (
        "{{ .Labels.job 1 }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:122: executing \"__alert_A\" at <.Lab"
            "els.job>: job is not a method but has arguments>"
        ),
    ),
    (
        "{{ define \"t\" }}{{ humanize . }}{{ end }}{{ template \"t\" \"zz\" }}",
        0.85,
        (
            "<error expanding template: error executing template __alert_"
            "A: template: __alert_A:1:131: executing \"t\" at <humanize .>:"
            " error calling humanize: strconv.ParseFloat: parsing \"zz\": i"
            "nvalid syntax>"
        ),
    ),
]


# Tables checked against promtool.
@pytest.mark.parametrize(("value", "expected"), VALUE_CASES)
def test_value_prints_as_go_prints_a_float64(value: float, expected: str) -> None:
    assert expand(VALUE_TEMPLATE, value) == expected


@pytest.mark.parametrize(("value", "expected"), HUMANIZE_CASES)
def test_humanize_functions_match_prometheus(value: float, expected: str) -> None:
    assert expand(HUMANIZE_TEMPLATE, value) == expected


@pytest.mark.parametrize(("value", "expected"), TIMESTAMP_CASES)
def test_humanize_timestamp_matches_prometheus(value: float, expected: str) -> None:
    assert expand(TIMESTAMP_TEMPLATE, value) == expected


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    HUMANIZE_EXTRA_CASES
    + TIME_CASES
    + PRINTF_CASES
    + CONTROL_CASES
    + COMPARISON_CASES
    + STRING_CASES
    + QUERY_CASES
    + ERROR_CASES,
)
def test_template_renders_as_in_prometheus(template: str, value: float, expected: str) -> None:
    assert expand(template, value) == expected


# format_go_float.
@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.85, "0.85"),
        (100.0, "100"),
        (1e6, "1e+06"),
        (1.5e-07, "1.5e-07"),
        (123456789.0, "1.23456789e+08"),
        (100000.0, "100000"),
        (1e-4, "0.0001"),
        (1e-5, "1e-05"),
        (1e21, "1e+21"),
        (1e100, "1e+100"),
        (NAN, "NaN"),
        (INF, "+Inf"),
        (-INF, "-Inf"),
        (-0.0, "-0"),
        (0.0, "0"),
        (0.1 + 0.2, "0.30000000000000004"),
        (5e-324, "5e-324"),
    ],
)
def test_format_go_float_examples(value: float, text: str) -> None:
    assert format_go_float(value) == text


def go_v_reference(x: float) -> str:
    """Go's %v of a float64, written plainly from Go's rules.

    Digits: the shortest decimal that reads back as x (Python's repr finds the same).
    Layout: strconv's %g with shortest precision, which uses exponent form when the
    decimal exponent is below -4 or at least 6 (so 100000 but 1e+06; promtool agrees),
    with at least two exponent digits and an explicit sign.
    """
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    sign, digits, exponent = decimal.Decimal(repr(x)).normalize().as_tuple()
    prefix = "-" if sign else ""
    if not any(digits):
        return prefix + "0"
    assert isinstance(exponent, int)
    mantissa = "".join(map(str, digits))
    exp10 = len(digits) - 1 + exponent
    if exp10 < -4 or exp10 >= 6:
        point = "." + mantissa[1:] if len(mantissa) > 1 else ""
        return f"{prefix}{mantissa[0]}{point}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    return prefix + format(decimal.Decimal(repr(abs(x))).normalize(), "f")


def go_4g_reference(x: float) -> str:
    """Go's %.4g: the exact binary value rounded half-to-even to 4 significant digits."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    prefix = "-" if math.copysign(1.0, x) < 0 else ""
    exact = decimal.Decimal(abs(x))
    if exact == 0:
        return prefix + "0"
    exp10 = exact.adjusted()
    rounded = exact.quantize(decimal.Decimal(1).scaleb(exp10 - 3), decimal.ROUND_HALF_EVEN)
    if rounded.adjusted() != exp10:  # 9.9995 rounds up to 10.00
        exp10 = rounded.adjusted()
    _, digits, _ = rounded.as_tuple()
    mantissa = "".join(map(str, digits))[:4].rstrip("0") or "0"
    if exp10 < -4 or exp10 >= 4:
        point = "." + mantissa[1:] if len(mantissa) > 1 else ""
        return f"{prefix}{mantissa[0]}{point}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    return prefix + format(rounded.normalize(), "f")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_go_float_round_trips(x: float) -> None:
    text = format_go_float(x)
    assert float(text) == x
    assert math.copysign(1.0, float(text)) == math.copysign(1.0, x)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_format_go_float_follows_go_rules(x: float) -> None:
    assert format_go_float(x) == go_v_reference(x)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_printf_4g_follows_go_rules(x: float) -> None:
    assert expand('{{ printf "%.4g" $value }}', x) == go_4g_reference(x)


# Errors, as Prometheus reports them.
def test_parse_error_reads_like_prometheus() -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{ nosuch }}", labels=INSTANCE, value=1.0, alert_name="PgDown")
    assert str(caught.value) == (
        'error parsing template __alert_PgDown: template: __alert_PgDown:1: '
        'function "nosuch" not defined'
    )


def test_render_or_error_puts_the_error_in_the_text() -> None:
    text = render_or_error("{{ gt $value 1 }}", labels=INSTANCE, value=0.5, alert_name="X")
    assert text == (
        "<error expanding template: error executing template __alert_X: template: "
        '__alert_X:1:115: executing "__alert_X" at <gt $value 1>: error calling gt: '
        "incompatible types for comparison>"
    )


def test_render_raises_template_error_at_execution() -> None:
    with pytest.raises(TemplateError, match="error calling first: first\\(\\) called on vector"):
        render('{{ query "absent" | first }}', labels={}, value=1.0, query=fake_query)


def test_failing_query_becomes_the_templates_error() -> None:
    def broken(expr: str) -> Sequence[QuerySample]:
        raise ValueError(f'parse error: unexpected "}}" in {expr}')

    text = render_or_error('{{ query "up{" }}', labels={}, value=1.0, query=broken)
    assert text.endswith('error calling query: parse error: unexpected "}" in up{>')


def test_query_without_a_query_function_is_an_error() -> None:
    text = render_or_error('{{ query "up" }}', labels={}, value=1.0)
    assert "no query function is available" in text


def test_external_url_functions_use_the_configured_url() -> None:
    # promtool's unit tests have no external URL, so these are checked here only.
    assert expand("{{ externalURL }}|{{ pathPrefix }}") == (
        "https://prometheus.example.com/prom|/prom"
    )


def test_rendering_leaves_the_callers_data_alone() -> None:
    labels = dict(INSTANCE)
    samples = list(SERIES["pg_connections_by_application"])
    rendered = render(
        '{{ range sortByLabel "application_name" (query "apps") }}'
        "{{ .Labels.application_name }} {{ end }}",
        labels=labels,
        value=1.0,
        query=lambda expr: samples,
    )
    assert rendered == "api cron worker "
    assert labels == INSTANCE
    assert samples == SERIES["pg_connections_by_application"]


def test_every_function_prometheus_offers_is_available() -> None:
    prometheus_functions = {
        "query", "first", "label", "value", "strvalue", "args", "reReplaceAll", "safeHtml",
        "match", "title", "toUpper", "toLower", "graphLink", "tableLink", "sortByLabel",
        "stripPort", "stripDomain", "humanize", "humanize1024", "humanizeDuration",
        "humanizePercentage", "humanizeTimestamp", "toTime", "pathPrefix", "externalURL",
        "parseDuration",
    }
    go_builtins = {
        "and", "or", "not", "len", "index", "slice", "print", "printf", "println", "html",
        "js", "urlquery", "call", "eq", "ne", "lt", "le", "gt", "ge",
    }
    assert prometheus_functions | go_builtins == FUNCTION_NAMES


# Load-time checks.
@pytest.mark.parametrize(
    "template",
    [
        "{{ $labels.instance }} has {{ $value | humanizePercentage }} of connections in use",
        '{{ printf "%.2f" $value }}',
        "{{ if gt $value 0.9 }}critical{{ else }}high{{ end }}",
        '{{ with query "topk(3, pg_connections_by_application)" }}{{ range . }}'
        "{{ .Labels.application_name }}={{ .Value }} {{ end }}{{ end }}",
        '{{ query "up" | first | value }}',
        "{{ $externalLabels.x }}",
        "{{ $x := 1 }}{{ $x }}",
        "{{- trimmed -}}".replace("trimmed", '"trimmed"'),
        '{{ define "t" }}{{ .Anything }}{{ end }}{{ template "t" . }}',
        "{{ range $labels }}{{ .Whatever }}{{ end }}",
        "{{ $value := 1 }}{{ $value.x }}",
        '{{ match $labels.pattern "x" }}',
        "plain text",
        "",
    ],
)
def test_check_accepts_valid_templates(template: str) -> None:
    check_template(template)


@pytest.mark.parametrize(
    ("template", "message", "line", "column"),
    [
        ("{{ nosuch 1 }}", 'function "nosuch" not defined', 1, 4),
        ("ok\n  {{ $labelz }}", 'undefined variable "$labelz"', 2, 6),
        ("{{ .Foo }}", 'unknown field ".Foo" of the alert data', 1, 4),
        ("x {{ $.Nope }}", 'unknown field ".Nope" of the alert data', 1, 6),
        ("{{ .Labels.a.b }}", '.Labels.a is a string and has no field "b"', 1, 4),
        ("{{ $value.x }}", '$value is a float64 and has no field "x"', 1, 4),
        ("{{ $externalURL.x }}", '$externalURL is a string and has no field "x"', 1, 4),
        ("{{ humanize 1 2 }}", "humanize takes 1 argument, got 2", 1, 4),
        ("{{ $value | humanize 2 }}", "humanize takes 1 argument, got 2", 1, 13),
        ("{{ printf }}", "printf needs at least 1 argument, got 0", 1, 4),
        ("{{ toUpper 3 }}", "toUpper expects a string here, found 3", 1, 12),
        ('{{ first "x" }}', 'first expects a query result here, found "x"', 1, 10),
        ("{{ gt $value 1 }}", "gt compares float64 with int", 1, 4),
        ("{{ eq $labels.job 1 }}", "eq compares string with int", 1, 4),
        ('{{ template "nope" }}', 'template "nope" is not defined', 1, 13),
        ('{{ match "(" $labels.x }}', "match: error parsing regexp: missing closing )", 1, 10),
        ("{{ if }}", "missing value for if", 1, 7),
        ("{{ if true }}", "unexpected EOF", 1, 14),
        ('{{ "abc }}', "unterminated quoted string", 1, 4),
    ],
)
def test_check_rejects_with_position_and_culprit(
    template: str, message: str, line: int, column: int
) -> None:
    with pytest.raises(TemplateError) as caught:
        check_template(template)
    assert message in str(caught.value)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert str(caught.value).startswith(f"line {line}, column {column}: ")


def test_gt_with_an_integer_suggests_a_float_constant() -> None:
    with pytest.raises(TemplateError, match=r"write 1\.0 to compare with a float"):
        check_template("{{ if gt $value 1 }}x{{ end }}")


# Live comparison with promtool.
PROMTOOL = shutil.which("promtool")
ORACLE_VALUES = [0.85, 1234567.0, 1e-05, 123456789.0, 0.000123, 3661.0, 0.1234, 1536.0, 0.0, NAN]
ORACLE_LABELS = {"severity": "{{ if gt $value 0.9 }}critical{{ else }}high{{ end }}"}
ORACLE_ANNOTATIONS = {
    "summary": "{{ $labels.instance }} has {{ $value | humanizePercentage }} of connections in use",
    "value": '{{ $value }}|{{ .Value }}|{{ printf "%.2f|%g|%e|%8.1f|%d" $value $value $value '
    "$value $value }}",
    "si": "{{ humanize $value }}|{{ humanize1024 $value }}|{{ humanizePercentage $value }}",
    "time": "{{ humanizeDuration $value }}|{{ humanizeTimestamp $value }}",
    "level": "{{ if gt $value 1000.0 }}huge{{ else if ge $value 0.5 }}high{{ else }}low{{ end }}",
    "top": '{{ range sortByLabel "application_name" (query "pg_connections_by_application") }}'
    "{{ .Labels.application_name }}={{ .Value | humanize }} {{ end }}",
    "first": '{{ with query "pg_connections_by_application" }}{{ len . }} series{{ end }}|'
    '{{ query "up" | first | value }}|{{ query "up" | first | label "job" }}',
    "strings": "{{ $labels.instance | stripPort | toUpper }}|{{ stripDomain $labels.instance }}|"
    '{{ reReplaceAll "^([^.]+).*$" "host=$1" $labels.instance }}|{{ title $labels.job }}|'
    '{{ match "^db[0-9]" $labels.instance }}|{{ js "<x>" }}|{{ html "a&b" }}',
    "links": '{{ graphLink "pg_connections_used_ratio > 0.8" }}|{{ tableLink "up" }}|'
    "{{ $externalLabels.cluster }}|{{ $externalURL }}|{{ urlquery $labels.instance }}",
    "misc": '{{ $d := parseDuration "1h30m" }}{{ $d }}|{{ (args $value "x").arg0 }}|'
    '{{ toTime 1700000000 }}|{{ printf "%q|%x|%T" $labels.job $labels.job $value }}|'
    "{{ range $k, $v := $labels }}{{ $k }};{{ end }}",
    "trim": "a  {{- $labels.job -}}  b {{/* note */}}",
    "error": "{{ gt $value 1 }}",
}


def _promtool_value(v: float) -> str:
    # Series notation is PromQL's number syntax, which reads Go's float format.
    return format_go_float(v)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_agrees_with_our_rendering(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = {
        "groups": [
            {
                "name": "connections",
                "rules": [
                    {
                        "alert": "ConnectionsHigh",
                        "expr": "pg_connections_used_ratio * 1",
                        "labels": ORACLE_LABELS,
                        "annotations": ORACLE_ANNOTATIONS,
                    }
                ],
            }
        ]
    }
    series = [
        {
            "series": f'pg_connections_used_ratio{{case="{i}", instance="db1.example.com:5432",'
            ' job="pg"}',
            "values": _promtool_value(v),
        }
        for i, v in enumerate(ORACLE_VALUES)
    ]
    series.append({"series": 'up{instance="db1.example.com:5432", job="pg"}', "values": "1"})
    series += [
        {"series": f'pg_connections_by_application{{application_name="{a}"}}', "values": str(v)}
        for a, v in APPLICATIONS
    ]

    def ours(template: str, case: int, value: float) -> str:
        return render_or_error(
            template,
            labels={"case": str(case), **INSTANCE},
            value=value,
            query=fake_query,
            external_labels=EXTERNAL_LABELS,
            external_url=EXTERNAL_URL,
            alert_name="ConnectionsHigh",
        )

    expected_alerts = [
        {
            "exp_labels": {
                "case": str(i),
                **INSTANCE,
                **{k: ours(t, i, v) for k, t in ORACLE_LABELS.items()},
            },
            "exp_annotations": {k: ours(t, i, v) for k, t in ORACLE_ANNOTATIONS.items()},
        }
        for i, v in enumerate(ORACLE_VALUES)
    ]
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "external_labels": EXTERNAL_LABELS,
                "external_url": EXTERNAL_URL,
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "0m",
                        "alertname": "ConnectionsHigh",
                        "exp_alerts": expected_alerts,
                    }
                ],
            }
        ],
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, allow_unicode=True))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, allow_unicode=True))

    result = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    # The error annotation is part of the comparison: Prometheus's own error text.
    assert expected_alerts[0]["exp_annotations"]["error"].startswith(
        "<error expanding template: error executing template __alert_ConnectionsHigh"
    )


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
@pytest.mark.parametrize(
    "template",
    ["{{ nosuch }}", "{{ $labelz }}", "{{ if }}", '{{ "abc }}', "{{ end }}", "a\n{{ ) }}"],
)
def test_promtool_reports_the_same_parse_errors(tmp_path: Path, template: str) -> None:
    assert PROMTOOL is not None
    rules = {"groups": [{"name": "g", "rules": [
        {"alert": "A", "expr": "vector(1)", "annotations": {"x": template}},
    ]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", "rules.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    with pytest.raises(TemplateError) as caught:
        render(template, labels={}, value=1.0, alert_name="A")
    ours = str(caught.value).removeprefix("error parsing template __alert_A: ")
    assert f'annotation "x": {ours}' in result.stdout + result.stderr
