"""Screenshots of the real MLflow UI for docs/reading-results.md, taken by a headless browser.

    pip install playwright            # the Python driver only; the browser is Debian's: apt-get install chromium
    python docs/screenshots.py --mlflow-uri sqlite:///$PWD/mlflow.db --experiment pudm-digits_even \
        --sweep wide-beta --sweep narrow-beta --out docs/images

Starts ``mlflow server`` on 127.0.0.1 (a free port) over the given store, opens the experiment's runs table with
both sweeps expanded and the objective columns shown, a sweep's Pareto plot and table, and MLflow's run comparison
of the sweeps' parent runs, saves PNGs, and stops the server. Not part of the package or its tests: a docs tool.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# The runs table's columns (MLflow UI's own keys) and the panels we close so that the page shows the runs.
COLUMNS = ["metrics.`non_sensitive_rate`", "metrics.`fd_classifier`", "params.`method`", "params.`beta`",
           "params.`correction`", "params.`lr`", "tags.`pudm.role`"]
QUIET_UI = ("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(uri: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host",
                               "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise SystemExit("mlflow server did not answer within 120 s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mlflow-uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--sweep", action="append", required=True, help="sweep name (repeat for two)")
    p.add_argument("--out", default="docs/images")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()

    from playwright.sync_api import sync_playwright

    from pudm_bench.tracking import list_sweeps

    sweeps = list_sweeps(args.mlflow_uri, args.experiment)
    parents = {row.sweep_name: row.run_id for row in sweeps.itertuples() if row.sweep_name in args.sweep}
    missing = set(args.sweep) - set(parents)
    if missing:
        raise SystemExit(f"no sweep named {sorted(missing)} in experiment {args.experiment}")
    from mlflow import MlflowClient

    experiment_id = MlflowClient(tracking_uri=args.mlflow_uri).get_experiment_by_name(args.experiment).experiment_id
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}"
    state = {"selectedColumns": COLUMNS, "runsExpanded": {run_id: True for run_id in parents.values()},
             "orderByKey": "attributes.start_time", "orderByAsc": False}
    state_key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
    server = start_server(args.mlflow_uri, port)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            init = QUIET_UI + f"localStorage.setItem({json.dumps(state_key)}, {json.dumps(json.dumps(state))});"
            shots = {"mlflow_runs_table.png": f"{base}/runs"}
            first = parents[args.sweep[0]]
            shots["mlflow_pareto_plot.png"] = f"{base}/runs/{first}/artifacts/pareto.png"
            shots["mlflow_pareto_table.png"] = f"{base}/runs/{first}/artifacts/pareto_front.json"
            runs = json.dumps(list(parents.values()))
            shots["mlflow_compare_sweeps.png"] = (f"http://127.0.0.1:{port}/#/compare-runs?runs={runs}"
                                                  f"&experiments={json.dumps([experiment_id])}")
            for name, url in shots.items():
                wide = name == "mlflow_pareto_table.png"  # the table view shows as many columns as fit
                page = browser.new_page(viewport={"width": 1900 if wide else 1500, "height": 900})  # fresh load
                page.add_init_script(init)
                page.goto(url)
                page.wait_for_timeout(6000)  # the UI renders after its API calls return
                artifact = url.rsplit("/artifacts/", 1)[-1] if "/artifacts/" in url else None
                if artifact:  # make sure the file is the one shown, whatever the route restored
                    page.get_by_text(artifact, exact=True).first.click()
                    page.wait_for_timeout(3000)
                page.screenshot(path=str(out / name))
                page.close()
                print(f"wrote {out / name}  ({url.replace(str(port), 'PORT')})")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
