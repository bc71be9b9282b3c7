"""Which target carries signal: `python -m mtlrank_ray.dev.target_bench [--tf-inputs expression,smoothed]`.

On the demo's counts file (`mtlrank-ray demo-data`: counts sampled from the
kinetic model, and the velocity, Ms and Mu scVelo estimates from them), it
runs `tune.py` with tune_configs/smoke.yaml's settings (or `--config`'s) once per data.target
(velocity, unspliced, spliced, expression) and TF input, each in a process
and a Ray of its own, and ranks the λ = 0 models too (`mtlrank-ray rank
--lambda 0`). It prints, per target, TF input and method (ours at the λ
chosen on validation, ours at λ = 0, the lasso, GRNBoost2, |Pearson|): mean
test R² over genes (none for |Pearson|), average precision against the
planted regulators with its chance value, the 95% interval of AP minus
chance and its verdict, and the early precision ratio. The table is also
written to OUT/target_bench.csv.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from ..analysis.baselines import RANKING
from ..analysis.evaluation import OURS, PEARSON
from ..analysis.results import markdown_table
from .demo import write_demo

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("velocity", "unspliced", "spliced", "expression")
# evaluation.csv's method -> (its name here, gene_r2's model or selected.csv's column)
METHODS = {OURS: ("ours, chosen λ", "mean_test_r2"), PEARSON: ("|Pearson|", None),
           RANKING["lasso"]: ("lasso", "lasso_mean_test_r2"),
           RANKING["grnboost2"]: ("GRNBoost2", "grnboost2_mean_test_r2")}


def run(demo: Path, out: Path, base: Path, target: str, tf_input: str) -> pd.DataFrame:
    """One sweep, with the settings of the YAML file `base`, and its rows of the table."""
    settings = yaml.safe_load(base.read_text())
    settings["data"] = {"format": "h5ad", "expression_is_log": True, "target": target, "tf_input": tf_input}
    # scVelo's velocity has no gaps: a gene has it in every cell (1,500 in Liver, 3,000 in Kidney_Left)
    settings["genes"].update(min_cells=1000, min_cells_by_tissue={})
    run_folder = out / f"{target}_{tf_input}"
    config = out / f"{target}_{tf_input}.yaml"
    config.write_text(yaml.safe_dump(settings))
    command = [sys.executable, str(REPO / "tune.py"), "--data", str(demo), "--config", str(config),
               "--out", str(run_folder), "--local", "-q", "--fresh"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # its tables: in the run folder
    rank = shutil.which("mtlrank-ray", path=str(Path(sys.executable).parent))
    subprocess.run([rank, "rank", str(run_folder), "--lambda", "0", "-q"], check=True,
                   stdout=subprocess.DEVNULL)
    selected = pd.read_csv(run_folder / "selected.csv")
    rows = []
    for suffix, chosen in (("", True), ("_lambda0", False)):
        evaluation = pd.read_csv(run_folder / f"evaluation{suffix}.csv")
        for (tissue, method), part in evaluation.groupby(["tissue", "method"]):
            name, column = METHODS[method]
            if not chosen:
                if method != OURS:
                    continue
                name, column = "ours, λ = 0", "lambda0_mean_test_r2"
            ap = part.set_index("measure").loc["average precision"]
            epr = part.set_index("measure").loc["early precision ratio"]
            rows.append({"target": target, "TF input": tf_input, "tissue": tissue, "method": name,
                         "test R²": selected.loc[selected.tissue == tissue, column].mean() if column else None,
                         "AP": ap.value, "chance": ap.chance,
                         "AP - chance [95%]": f"{ap.value - ap.chance:+.3f} [{ap.over_chance_low:+.3f}, "
                                              f"{ap.over_chance_high:+.3f}]",
                         "verdict": ap.verdict, "EPR": epr.value})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-inputs", default="expression,smoothed")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--config", type=Path, default=REPO / "tune_configs" / "smoke.yaml",
                        help="the sweep's settings (its data and gene selection are the bench's)")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="mtlrank-target-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    demo = write_demo(out / "demo")
    table = pd.concat([run(demo, out, args.config, target, tf_input)
                       for tf_input in args.tf_inputs.split(",") for target in args.targets.split(",")],
                      ignore_index=True)
    table.to_csv(out / "target_bench.csv", index=False)
    print(markdown_table(table))
    print(f"\n{out / 'target_bench.csv'}")


if __name__ == "__main__":
    main()
