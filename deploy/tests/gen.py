#!/usr/bin/env python3
"""Writes the generated parts of the chart: values.schema.json (from
values.schema.base.json and each service's defaults.toml) and the values
table of helm/tenx/README.md (from the `# --` comments in values.yaml).
test_chart.py fails when either is stale: run this after changing them.

    .tools/venv/bin/python deploy/tests/gen.py
"""

import sys

import chart_readme
import tenx_deploy

if __name__ == "__main__":
    (tenx_deploy.CHART / "values.schema.json").write_text(tenx_deploy.schema_text())
    readme = tenx_deploy.CHART / "README.md"
    readme.write_text(chart_readme.with_table(readme.read_text()))
    print("wrote", tenx_deploy.CHART / "values.schema.json", "and", readme, file=sys.stderr)
