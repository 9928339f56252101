#!/usr/bin/env python3
"""Writes the generated parts of the chart: values.schema.json (from
values.schema.base.json and each service's defaults.toml), the values
table of helm/tenx/README.md (from the `# --` comments in values.yaml) and
the Grafana dashboards in helm/tenx/dashboards/ (from dashboards.py).
test_chart.py fails when either is stale: run this after changing them.

    .tools/venv/bin/python deploy/tests/gen.py
"""

import sys

import chart_readme
import dashboards
import tenx_deploy

if __name__ == "__main__":
    (tenx_deploy.CHART / "values.schema.json").write_text(tenx_deploy.schema_text())
    readme = tenx_deploy.CHART / "README.md"
    readme.write_text(chart_readme.with_table(readme.read_text()))
    boards = tenx_deploy.CHART / "dashboards"
    boards.mkdir(exist_ok=True)
    for stale in boards.glob("*.json"):
        stale.unlink()
    for name, board in dashboards.boards().items():
        (boards / name).write_text(dashboards.text(board))
    print("wrote", tenx_deploy.CHART / "values.schema.json", readme, "and", boards, file=sys.stderr)
