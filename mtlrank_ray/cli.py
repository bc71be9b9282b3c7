"""The `mtlrank-ray` command and `tune.py`'s entry point.

Errors a user can fix (`InputError`) and failed training (`TrainingError`)
print as one line and exit with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import yaml

from .config import load_config
from .data.prepare import TissueReport, prepare_store, selected_tissues
from .data.scvelo import H5AD_DIR
from .dev.demo import DemoSpec, write_demo
from .errors import InputError, TrainingError
from .interrupts import CtrlC, Interrupted
from .run_folder import EarlierTissues, earlier_tissues, stale_rankings

log = logging.getLogger("mtlrank_ray")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow C++ info, and CUDA probing on CPU hosts

DEMO_DATA = Path("demo")
SMOKE_CONFIG = Path("tune_configs/smoke.yaml")


def _common_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
    return common


def main(argv: list[str] | None = None) -> int:
    common = _common_flags()
    parser = argparse.ArgumentParser(prog="mtlrank-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo-data", parents=[common],
                               help="write a synthetic atlas in the seed layout, with its truth")
    demo.add_argument("out", type=Path)
    demo.add_argument("--seed", type=int, default=DemoSpec.seed)
    demo.add_argument("--cells", type=_cells, default=None,
                      help='cells per tissue, e.g. "Kidney (Left)=3000,Liver=1500"')
    demo.add_argument("--tfs", type=int, default=DemoSpec.n_tfs, help="TFs in the expression matrix")
    demo.add_argument("--genes", type=int, default=DemoSpec.n_genes, help="velocity genes per tissue")
    demo.set_defaults(run=_demo_data)

    prepare = commands.add_parser("prepare", parents=[common],
                                  help="align inputs, select and cluster genes, write the store")
    _data_arguments(prepare)
    prepare.add_argument("--out", required=True,
                         help="the aligned store: a folder or a URI such as s3://bucket/prefix")
    prepare.set_defaults(run=_prepare)

    lasso = commands.add_parser("lasso", parents=[common],
                                help="write DATA/results/r2/lasso_r2.csv, the lasso list the "
                                     "gene selection reads (the notebook's lasso step)")
    _data_arguments(lasso)
    lasso.add_argument("--jobs", type=int, default=None,
                       help="genes fitted at once (default: the machine's cores)")
    lasso.set_defaults(run=_lasso)

    rank = commands.add_parser("rank", parents=[common],
                               help="TF rankings and the consensus network of a finished sweep")
    rank.add_argument("out", type=Path, help="the run folder tune.py wrote")
    rank.add_argument("--top", type=int, default=None,
                      help="network: TFs in the top K of every replicate (default: a tenth of "
                           "the tissue's TFs)")
    rank.add_argument("--lambda", dest="lam", type=float, default=None,
                      help="rank every group's model of this λ instead of the selected one (fetched "
                           "from the sweep's storage); writes rankings_lambda<λ>.parquet and "
                           "network_lambda<λ>.csv")
    rank.set_defaults(run=_rank)

    evaluate = commands.add_parser("evaluate", parents=[common],
                                   help="score every ranking method against a reference network")
    evaluate.add_argument("out", type=Path, help="the run folder tune.py wrote")
    evaluate.add_argument("--reference", type=Path, required=True,
                          help="CSV of edges: columns tf, gene (ids or symbols), optionally tissue")
    evaluate.add_argument("--lambda", dest="lam", type=float, default=None,
                          help="evaluate the rankings `rank --lambda` wrote for this λ")
    evaluate.add_argument("--k", type=int, default=10, help="precision at k (default 10)")
    evaluate.set_defaults(run=_evaluate)

    report = commands.add_parser("report", parents=[common],
                                 help="plots and an HTML report of a finished sweep")
    report.add_argument("out", type=Path, help="the run folder tune.py wrote")
    report.set_defaults(run=_report)
    return _run(parser, argv)


def tune_main(argv: list[str] | None = None) -> int:
    """`python tune.py`: prepare the aligned store if needed, run the sweep over
    (tissue, cluster, replicate, λ) on Ray, and write the results."""
    return _run(tune_parser(), argv)


def tune_parser() -> argparse.ArgumentParser:
    """`python tune.py`'s arguments (the notebook API builds the same command)."""
    parser = argparse.ArgumentParser(prog="tune.py", description=tune_main.__doc__,
                                     parents=[_common_flags()])
    _data_arguments(parser, demo=True)
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default: runs/<config name>): results, OUT/store "
                             "(the aligned store) and OUT/sweep (Tune's trials)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted sweep in OUT (finished trials are kept)")
    parser.add_argument("--fresh", action="store_true",
                        help="start OUT over: drop the results of tissues run into it before "
                             "(by default they are kept beside this run's)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also print Tune's per-trial tables and Ray's own progress lines")
    parser.add_argument("--dashboard", action="store_true",
                        help="start the Ray dashboard with a local Ray and print its address")
    joining = parser.add_mutually_exclusive_group()
    joining.add_argument("--address", default=None,
                         help="join this running Ray cluster (HOST:PORT or 'auto'); default: "
                              "RAY_ADDRESS, else the cluster this machine is the head of (the "
                              "address file `ray start` leaves), else a Ray of this run's own")
    joining.add_argument("--local", action="store_true",
                         help="run on a Ray of this run's own even on a cluster's head")
    parser.set_defaults(run=_tune)
    return parser


def _data_arguments(parser: argparse.ArgumentParser, demo: bool = False) -> None:
    parser.add_argument("--tissue", default="all", help="all, or tissue keys separated by commas")
    source = parser.add_mutually_exclusive_group(required=not demo)
    source.add_argument("--data", type=Path, help="data root holding data/ (and results/)"
                        + ("; default: this folder, when it holds data/" if demo else ""))
    if demo:
        source.add_argument("--demo", action="store_true",
                            help=f"use the demo atlas in {DEMO_DATA}/ (written if missing) "
                                 f"and {SMOKE_CONFIG}")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config (default: the built-in defaults; see README)")


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        args.run(args)
    except (InputError, TrainingError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as exc:
        if args.debug:
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the one line below is printed whole
        hint = getattr(args, "interrupt_hint", None)
        print(f"\ninterrupted{': ' + hint(exc) if hint else ''}", file=sys.stderr)
        return 130
    return 0


def _interrupt_hint(args, config, out: Path, ctrl_c: CtrlC):
    """What to run after Ctrl-C: the same command, with --resume once this run's sweep
    has started (an earlier run's sweep in the folder is not this run's to resume)."""
    def hint(exc: BaseException) -> str:
        from ray import tune

        from .run_storage import experiment_path

        if isinstance(exc, Interrupted) and str(exc) == "publish":
            return f"the results in {out} were written whole first"
        # The script as it was started (a user in the data folder runs it by its path).
        script = sys.argv[0] if Path(sys.argv[0]).name == "tune.py" else "tune.py"
        command = ["python", script, *[a for a in args.argv if a != "--resume"]]
        try:
            resumable = ((ctrl_c.swept or args.resume)
                         and tune.Tuner.can_restore(experiment_path(config, out)))
        except Exception:  # storage unreachable: say the plain command
            resumable = False
        verb = "to go on, run" if resumable else "nothing was written; run again with"
        return f"{verb}: {shlex.join(command + (['--resume'] if resumable else []))}"
    return hint


def _cells(text: str) -> dict[str, int]:
    try:
        pairs = [item.rsplit("=", 1) for item in text.split(",")]
        return {name.strip(): int(count) for name, count in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=COUNT pairs, got {text!r}") from None


def _demo_data(args) -> None:
    spec = DemoSpec(seed=args.seed, n_tfs=args.tfs, n_genes=args.genes,
                    **({"cells": args.cells} if args.cells else {}))
    out = write_demo(args.out, spec)
    print(f"demo atlas written to {out} (truth in {out / 'truth'})")


def _prepare(args) -> None:
    reports = prepare_store(args.data, load_config(args.config), args.out, args.tissue)
    _print_reports(reports, args.out)


def _lasso(args) -> None:
    from .analysis.results import markdown_table
    from .data.lasso_list import write_lasso_list

    path, rows = write_lasso_list(args.data, load_config(args.config), args.tissue, args.jobs)
    print(f"lasso list: {path} ({len(rows)} genes written)")
    summary = rows.groupby("tissue").r2.agg(genes="size", mean_r2="mean", median_r2="median")
    print(markdown_table(summary.reset_index()))


def _tune(args) -> None:
    if args.demo:
        args.data = DEMO_DATA
        args.config = args.config or SMOKE_CONFIG
    config = load_config(args.config)  # a bad config is named before a missing data folder
    from .distributed.tuner import check_concurrency

    check_concurrency(config)
    if config.search.searcher == "optuna" and importlib.util.find_spec("optuna") is None:
        raise InputError(f"{args.config}: search.searcher optuna needs the optuna package: "
                         "pip install -e '.[optuna]'")
    if args.data is None:  # the notebook reads data/... from the folder it runs in
        if not Path("data").is_dir():
            raise InputError(f"no data/ folder in {Path.cwd()}: run from the folder that holds "
                             "data/, or pass --data DIR (or --demo for the demo atlas)")
        args.data = Path.cwd()
    out = args.out or Path("runs") / (args.config.stem if args.config else "default")
    ctrl_c = CtrlC()
    args.interrupt_hint = _interrupt_hint(args, config, out, ctrl_c)
    with ctrl_c.handling():
        if args.demo and not (DEMO_DATA / "truth" / "params.json").is_file():
            write_demo(DEMO_DATA)
            log.info("demo atlas written to %s", DEMO_DATA)
        if args.demo and config.data.format == "h5ad" and not (DEMO_DATA / H5AD_DIR).is_dir():
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, format="seed"))
            log.warning("the demo in %s has no counts file (it is written where scVelo is "
                        "installed: pip install -e '.[test]'); reading its seed layout, whose "
                        "velocity is the true one with noise", DEMO_DATA)
        # Refused before the store changes when the folder holds tissues swept otherwise,
        # or when storage holds a sweep this run would replace by mistake.
        earlier = earlier_tissues(out, config, selected_tissues(args.data, config, args.tissue),
                                  args.fresh)
        if not args.resume:
            from .distributed.resume import check_new_sweep
            check_new_sweep(config, out, args.fresh)
        store = config.run.store(out)
        reports = prepare_store(args.data, config, store, args.tissue)
        _print_reports(reports, store)
        swept = _sweep_on_ray(args, config, out, store, reports, ctrl_c)
        with ctrl_c.during("publish"):
            _publish(args, config, out, earlier, *swept)


def _sweep_on_ray(args, config, out: Path, store: str, reports: list[TissueReport], ctrl_c: CtrlC):
    """Run the sweep with its baselines and rankings: (trials, failed trials, the
    selected λ per group, the GroupTasks with the baselines and rankings)."""
    import ray  # imported here: `prepare` and `demo-data` need no Ray

    from .analysis.baselines import LABEL
    from .analysis.results import collect, gene_table, selected_table
    from .console import (
        SweepProgress,
        TaskProgress,
        phase,
        quiet_missing_metrics,
        quiet_token_notice,
        quiet_worker_output,
    )
    from .core.trial import Trial
    from .distributed.group_tasks import GroupsFinished, GroupTasks
    from .distributed.ray_data import materialize_tissue
    from .distributed.joining import KEEP_IDLE_WORKERS, LOCAL, joined_line, ray_address
    from .distributed.resume import resumable
    from .distributed.search_space import trials_per_group
    from .distributed.storage_check import check_storage
    from .distributed.tuner import groups, run_sweep
    from .run_storage import EXPERIMENT, experiment_path

    if args.resume:
        resumable(config, out)  # fails before Ray starts when there is nothing to resume
    # A joined cluster has its own dashboard; locally it is opt-in.
    address, note = ray_address(args.address, args.local, os.environ)
    if note:
        print(note, file=sys.stderr)
    joined = address != LOCAL
    local = {} if joined else {"include_dashboard": args.dashboard, "_system_config": KEEP_IDLE_WORKERS}
    if not joined:
        quiet_token_notice()
    quiet_missing_metrics()
    context = ray.init(address=address, **local,
                       logging_level=logging.INFO if args.verbose else logging.WARNING)
    if context.dashboard_url:
        token = (" (it asks for this Ray's token: `ray get-auth-token` prints it)"
                 if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else "")  # set by ray.init
        print(f"Ray dashboard: http://{context.dashboard_url}{token}")
    if not args.verbose:
        quiet_worker_output(config.resources.gpu)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's newer reporter prints a box even when silent
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # Ray Data keeps its own at INFO
        ray.data.DataContext.get_current().enable_progress_bars = False
    say = (lambda text: None) if args.quiet else phase
    if joined:
        say(joined_line(address))
    experiment = experiment_path(config, out)
    try:
        check_storage(config, out)
        started = time.monotonic()
        blocks = {r.tissue: materialize_tissue(store, r.tissue, config.resources.cpu) for r in reports}
        say(f"data: {len(blocks)} tissue{'s' * (len(blocks) != 1)} in Ray's object store "
            f"({time.monotonic() - started:.0f} s)")
        # Baselines and rankings run beside the trials, on the CPUs they leave free.
        tasks = GroupTasks(blocks, config, experiment, resumed=args.resume)
        every_group = groups(list(blocks.values()), config)
        tasks.add_baselines(every_group)
        GroupsFinished.tasks = tasks
        try:
            progress = (() if args.quiet or args.verbose
                        else (SweepProgress(total=len(every_group) * trials_per_group(config.search)),))
            with ctrl_c.during("sweep"):
                grid = run_sweep(blocks, config, out, resume_sweep=args.resume, verbose=int(args.verbose),
                                 callbacks=(GroupsFinished(trials_per_group(config.search)), *progress))
        finally:
            GroupsFinished.tasks = None
        trials, failed = collect(grid)
        if not trials:
            raise TrainingError(f"no trial reported a result; Tune's logs are in {out / EXPERIMENT}")
        chosen = selected_table(gene_table(trials, config.training.epochs, []))
        for row in chosen.to_dict("records"):  # groups not ranked yet (resumed, or a trial failed)
            tasks.add_ranking(Trial.from_config(row))
        swept = time.monotonic()
        left = tasks.outstanding()
        progress = None
        if sum(left.values()):
            say(f"after the sweep, baselines and rankings to do: "
                f"{', '.join(f'{n} {LABEL.get(kind, kind)}' for kind, n in sorted(left.items()))}")
            progress = None if args.quiet or args.verbose else TaskProgress(sum(left.values()))
        try:
            tasks.finish(on_done=progress.advance if progress else None)
        finally:
            if progress:
                progress.close()
        during = sum(kind == "rankings" and at < swept for kind, _, at in tasks.submitted)
        kept = (f"; kept from the interrupted sweep: {tasks.kept['baselines']} fits, "
                f"{tasks.kept['rankings']} rankings" if args.resume else "")
        say(f"baselines and rankings: {tasks.baseline_counts()}, TF rankings of {len(tasks.rankings)} "
            f"groups ({during} made during the sweep), {len(tasks.failed)} failed{kept}")
    finally:
        ray.shutdown()
    return trials, failed, chosen, tasks


def _publish(args, config, out: Path, earlier: EarlierTissues, trials, failed, chosen, tasks) -> None:
    """Write the results, models, rankings and report to the run folder: this run's
    tissues and the `earlier` ones it keeps."""
    import shutil

    from .analysis.rankings import concat_rankings, write_rankings
    from .analysis.results import fit_bottom_line, gene_table, markdown_table, selected_table, write_results
    from .core.trial import Trial
    from .data.store import install, write_atomically
    from .distributed.resume import mark_published
    from .run_folder import stage_models
    from .run_storage import EXPERIMENT, experiment_path

    baselines = [(group, fit) for (group, _), fit in sorted(tasks.baselines.items())]
    genes = gene_table(trials, config.training.epochs, baselines, earlier.genes, config.data.target)
    ranked = [tasks.rankings[trial] for row in chosen.to_dict("records")
              if (trial := Trial.from_config(row)) in tasks.rankings]
    if earlier.rankings is not None:
        ranked.append(earlier.rankings)
    rankings = concat_rankings(ranked) if ranked else None
    # What can fail (fetching the models) comes before anything is written.
    staged = stage_models(chosen, tasks.baselines, experiment_path(config, out), out / "models",
                          earlier.models)
    try:
        about = (f"Data: {args.data}; config: {args.config or 'built-in defaults'}; "
                 f"target: {config.data.target}, TF input: {config.data.tf_input}; "
                 f"{len(trials)} trials, {len(failed)} failed; {tasks.baseline_counts()}; "
                 f"{len(tasks.failed)} baselines and rankings failed."
                 + (f" Kept from earlier runs: {', '.join(earlier.tissues)}." if earlier.tissues else ""))
        summary = write_results(out, genes, failed + tasks.failed, about)
        write_atomically(out / "config.yaml",
                         lambda p: Path(p).write_text(yaml.safe_dump(config.to_dict())))
    except BaseException:
        shutil.rmtree(staged)
        raise
    install(staged, out / "models")
    for path in stale_rankings(out):
        path.unlink()
    print(f"\nresults: {out}/gene_r2.parquet, gene_r2.csv, selected.csv, summary.md")
    print(markdown_table(summary))
    print("\n".join(fit_bottom_line(genes, selected_table(genes))))
    if rankings is not None:
        _print_rankings(out, None, *write_rankings(out, rankings, top=None)[1:])
    else:  # every ranking failed (listed in summary.md): no earlier run's rankings stay beside
        for name in ("rankings.parquet", "network.csv", "evaluation.csv"):
            (out / name).unlink(missing_ok=True)
    _report(argparse.Namespace(out=out))
    if not (failed or tasks.failed):  # a sweep with failures stays resumable, not replaceable
        mark_published(experiment_path(config, out), out)
    if failed or tasks.failed:
        raise TrainingError(f"{len(failed)} trials and {len(tasks.failed)} baselines or rankings "
                            f"failed (listed in {out / 'summary.md'}); Tune's logs are in "
                            f"{out / EXPERIMENT}")


def _report(args) -> None:
    from .analysis.report import write_report

    print(f"report: {write_report(args.out)}")


def _rank(args) -> None:
    from .native_output import native_stderr_filtered

    with native_stderr_filtered():  # TensorFlow loads, and starts, in here
        from .analysis.rankings import rank_run
        _, network, quality = rank_run(args.out, args.top, args.lam)
    _print_rankings(args.out, args.top, network, quality, "" if args.lam is None else f"_lambda{args.lam:g}")


def _print_rankings(out: Path, top: int | None, network, evaluation, suffix: str = "") -> None:
    size = f"top {top}" if top is not None else "top tenth of the TFs"
    print(f"\nTF rankings: {out}/rankings{suffix}.parquet; network ({size} in every replicate): "
          f"{out}/network{suffix}.csv, {len(network)} edges")
    if evaluation is not None:
        _print_evaluation(evaluation, "the planted regulators", out / f"evaluation{suffix}.csv")


def _print_evaluation(evaluation, against: str, path: Path) -> None:
    """The bottom line per tissue; every method's measures are in `path` and the report."""
    from .analysis.evaluation import OURS, in_brief

    print(f"rankings against {against}, ours = {OURS}, average precision [95% interval over "
          f"genes]; every method and measure: {path}")
    print("\n".join(in_brief(evaluation)))


def _evaluate(args) -> None:
    from .analysis.evaluation import evaluate_run

    evaluation = evaluate_run(args.out, args.reference, args.lam, args.k)
    suffix = "" if args.lam is None else f"_lambda{args.lam:g}"
    _print_evaluation(evaluation, str(args.reference), args.out / f"evaluation{suffix}.csv")
    if args.lam is None:
        _report(args)


def _print_reports(reports: list[TissueReport], store: str | Path) -> None:
    print(f"aligned store: {store}")
    print(f"{'tissue':<16}{'cells':>8}{'TFs':>6}{'genes':>7}{'clusters':>10}  store")
    for r in reports:
        s = r.shapes
        print(f"{r.tissue:<16}{s['cells']:>8}{s['tfs']:>6}{s['genes']:>7}{s['clusters']:>10}  "
              f"{r.status} ({r.reason})")
