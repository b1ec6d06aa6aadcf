"""The `vitolaunch` command. Heavy modules (torch, deepspeed, mlflow) load only inside the commands that
need them, so `vitolaunch --help` and `--dry-run` answer instantly."""

from __future__ import annotations

import sys
import time

import click

from vitolaunch import __version__
from vitolaunch.data_cli import data as data_commands
from vitolaunch.errors import VitolaunchError

TRACKING_OPTION = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite in $VITOLAUNCH_HOME]",
)


def _console():
    from rich.console import Console

    # Piped output (CI logs, `| grep`) gets a wide fixed width instead of rich's 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=200, soft_wrap=True)


def _launcher(tracking_uri: str | None):
    from vitolaunch.launch.launcher import Launcher
    from vitolaunch.workspace import Workspace

    return Launcher(Workspace.from_env(), tracking_uri)


def _existing_tracking_uri(tracking_uri: str | None) -> str:
    """The store of commands about runs that must already exist: a missing sqlite file is an error, not created."""
    from vitolaunch.workspace import Workspace, sqlite_path

    uri = Workspace.from_env().tracking_uri_or_default(tracking_uri)
    if (database := sqlite_path(uri)) is not None and not database.exists():
        raise VitolaunchError(f"no sweeps here yet: {uri} does not exist (start one with `vitolaunch sweep SPEC`, "
                              "or point --tracking-uri / VITOLAUNCH_HOME at the store that has them)")
    return uri


def _existing_launcher(tracking_uri: str | None):
    _existing_tracking_uri(tracking_uri)
    return _launcher(tracking_uri)


class _Group(click.Group):
    """Turns our own errors into one clear line and exit code 2, instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VitolaunchError as problem:
            click.secho(f"error: {problem}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__)
def main() -> None:
    """Sweeps of VITO video pretraining on SLURM (or this machine), tracked in MLflow."""


@main.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a spec key, e.g. -o resources.nodes=2 -o base.train.steps=50 (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the trials and submit nothing.")
@click.option("--retry-failed", is_flag=True, help="Resubmit failed or interrupted trials (from their checkpoints).")
@TRACKING_OPTION
def sweep(spec_file: str, overrides: tuple[str, ...], dry_run: bool, retry_failed: bool, tracking_uri: str | None) -> None:
    """Submit the trials of SPEC_FILE and return; trials already running or finished are skipped."""
    from vitolaunch.launch.sweep import plan_sweep, submit_planned
    from vitolaunch.spec import resolve_cluster

    planned = plan_sweep(spec_file, overrides, tracking_uri)
    console = _console()
    if dry_run:
        _dry_run(console, planned)
        return
    _local_note(console, planned.spec.resources, resolve_cluster(planned.spec.resources))
    reports = [report for spec, report in _printed(console, submit_planned(planned, retry_failed))]
    for line in _next_steps(reports[0]):
        console.print(line, soft_wrap=True)


def _printed(console, submitted):
    """Each report printed as soon as its sweep is queued (the sweep's before its evaluation fails, say)."""
    for spec, report in submitted:
        _print_report(console, spec, report)
        yield spec, report


def _dry_run(console, planned) -> None:
    from vitolaunch.launch.benchmark_check import check_benchmark_roots
    from vitolaunch.launch.plan import render_plan, resource_lines
    from vitolaunch.spec import check_early_stop, check_trials_fit_resources, resolve_cluster, trial_resources

    spec, trials = planned.spec, planned.trials
    cluster = resolve_cluster(spec.resources)
    console.print(render_plan(spec, trials, cluster))
    click.echo("resources (merged; where each value came from):")
    click.echo("\n".join(resource_lines(trial_resources(spec, trials), spec.resource_sources)))
    _local_note(console, spec.resources, cluster)
    if cluster == "slurm":
        _slurm_dry_run(console, spec, trials)
    check_trials_fit_resources(spec, trials)  # after the cluster's facts; a real sweep checks both in preflight
    check_early_stop(spec, trials)
    check_benchmark_roots(spec, trials)
    console.print(f"dry run: {len(trials)} trials, nothing submitted")
    if planned.then is not None:
        console.print(f"then: {planned.then.source_file} would be queued, each evaluation waiting for its pretraining trial")


def _print_report(console, spec, report) -> None:
    counts: dict[str, int] = {}
    for outcome in report.outcomes:
        counts[outcome.action.value] = counts.get(outcome.action.value, 0) + 1
    summary = ", ".join(f"{n} {action}" for action, n in counts.items())
    console.print(f"sweep [bold]{report.sweep_name}[/] id [bold]{report.sweep_run_id}[/] on {report.backend}: {summary}")
    notes = {
        "submitted": "submitted",
        "resubmitted": "resubmitted (resumes from its checkpoint)",
        "running": "already queued or running: skipped",
        "finished": "already finished: skipped",
        "failed": "failed earlier: skipped (use --retry-failed, or vitolaunch resume RUN_ID)",
        "pruned": "pruned by early stopping: skipped (vitolaunch resume RUN_ID continues it)",
    }
    lines = []
    for outcome in report.outcomes:
        params = " ".join(f"{k}={v}" for k, v in outcome.trial.params.items())
        job = f" job {outcome.job_id}" if outcome.job_id else ""
        note = notes[outcome.action.value]
        lines.append(f"  {outcome.trial.index:03d} {outcome.trial.key[:8]}  run {outcome.run_id}  {params}  {note}{job}")
    # One plain write: rich's per-line markup and highlighting cost ~1 ms a line (1 s for 1000 trials), and a
    # swept value such as [4, 5] is data, not markup.
    click.echo("\n".join(lines))
    queued = counts.get("submitted", 0) + counts.get("resubmitted", 0)
    if queued > spec.resources.array_parallelism:
        console.print(f"at most {spec.resources.array_parallelism} trials run at once (resources.array_parallelism): "
                      "the others are QUEUED until a slot frees")


def _next_steps(report) -> list[str]:
    """What to run next, verbatim: the commands carry the tracking store when it is not the default one."""
    from vitolaunch.results.mlflow_ui import runs_page

    store = _store_option(report.tracking_uri)
    if report.tracking_uri.startswith(("http://", "https://")):  # a tracking server serves its own UI
        ui = f"open {runs_page(report.tracking_uri, report.experiment_id, report.sweep_name)}"
    else:
        page = runs_page("http://127.0.0.1:5000", report.experiment_id, report.sweep_name)
        ui = f"mlflow ui --backend-store-uri {report.tracking_uri}, then open {page}"
    return [f"watch:   vitolaunch status {report.sweep_name} --watch{store}", f"compare: {ui}",
            f"answer:  vitolaunch compare {report.sweep_name}{store}"]


def _store_option(tracking_uri: str) -> str:
    """` --tracking-uri URI` when the store is not the one the commands find by default."""
    from vitolaunch.workspace import Workspace

    default = Workspace.from_env().tracking_uri_or_default(None)
    return "" if tracking_uri == default else f" --tracking-uri {tracking_uri}"


def _local_note(console, resources, cluster: str) -> None:
    """A laptop runs the same spec (and the same profile): say which site settings it cannot honour."""
    ignored = resources.slurm_only_keys() if cluster == "local" else []
    if ignored:
        console.print(f"note: the local backend ignores {', '.join(ignored)} (SLURM only); resources.env applies",
                      highlight=False)


def _slurm_dry_run(console, spec, trials) -> None:
    """The sbatch script, then (where SLURM answers) the partition checks and `sbatch --test-only`."""
    from vitolaunch.backends.slurm import SlurmBackend, plan_arrays, render_script
    from vitolaunch.launch.resource_check import check_resources
    from vitolaunch.spec import trial_resources
    from vitolaunch.tracking.records import trial_job_name
    from vitolaunch.workspace import Workspace

    resources = trial_resources(spec, trials)
    log_root = Workspace.from_env().log_dir(spec.name)
    names = [trial_job_name(spec.name, t.index, t.key) for t in trials]
    backend = SlurmBackend()
    reachable = backend.reachable()
    # The plan submit() queues (one function plans both): each array's range and %N, its lane, what it waits for.
    plan = plan_arrays(len(names), resources.array_parallelism, backend.max_array_size() if reachable else max(1, len(names)))
    if len(plan) > 1:
        click.echo("\n".join(split_plan_lines(plan, [t.index for t in trials], backend.max_array_size(),
                                               resources.array_parallelism)))
        console.print("sbatch script of array 1 (the others differ only in --array and --dependency, as listed):")
    else:
        console.print(f"sbatch script ({len(plan)} array):")
    first = plan[0] if plan else None
    click.echo(render_script(resources, [names[k] for k in first.trials] if first else names, log_root, planned=first))
    if not reachable:
        console.print("SLURM is not reachable from here: partition checks and sbatch --test-only skipped")
        return
    check_resources(spec, backend, resources)  # a missing partition, too many nodes, too long: one located error
    console.print(f"sbatch --test-only: {backend.test_only(resources, names, log_root)}")


def split_plan_lines(plan, indexes: list[int], max_array_size: int, parallelism: int) -> list[str]:
    """A split sweep's arrays as sbatch will get them: each array's trials, --array=<range>%N, lane, dependency."""
    lanes = len({planned.lane for planned in plan})
    shared = f"{lanes} lanes whose %N add up to" if lanes > 1 else "1 lane whose %N is"
    lines = [f"{len(indexes)} trials in {len(plan)} arrays (the cluster's MaxArraySize is {max_array_size}), in "
             f"{shared} {min(parallelism, len(indexes))} (array_parallelism {parallelism}):",
             "in a lane each array starts once the one before it has ended (--dependency=afterany)"]
    for number, planned in enumerate(plan, start=1):
        first, last = indexes[planned.trials[0]], indexes[planned.trials[-1]]
        trials = f"trial {first:03d}" if first == last else f"trials {first:03d}-{last:03d}"
        waits = f"  --dependency=afterany:<array {planned.after + 1}>" if planned.after is not None else ""
        lines.append(f"  array {number}  lane {planned.lane + 1}  {trials:<17} --array={planned.array_range}{waits}")
    return lines


@main.command()
@click.argument("sweep_id", required=False)
@click.option("--watch", is_flag=True, help="Redraw until every trial has ended.")
@click.option("--interval", default=5.0, show_default=True, help="Seconds between redraws with --watch.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--stalled-after", type=float, envvar="VITOLAUNCH_STALLED_AFTER_S", default=600.0, show_default=True,
              help="A RUNNING trial that logged nothing for this many seconds shows as STALLED "
                   "[env: VITOLAUNCH_STALLED_AFTER_S].")
@TRACKING_OPTION
def status(sweep_id: str | None, watch: bool, interval: float, as_json: bool, stalled_after: float,
           tracking_uri: str | None) -> None:
    """Show every sweep and trial (or one sweep: SWEEP_ID is its name or run id)."""
    from functools import partial

    from vitolaunch.results.status_table import all_terminal, collect_rows, render_table, rows_as_json
    from vitolaunch.tracking.sqlite_reader import open_run_reader
    from vitolaunch.workspace import Workspace, quiet_mlflow_environment

    quiet_mlflow_environment()
    workspace = Workspace.from_env()
    rows_of = partial(collect_rows, stalled_after=stalled_after)
    reader = open_run_reader(workspace.tracking_uri_or_default(tracking_uri), workspace)
    console = _console()
    rows, problems = _rows(rows_of, reader, sweep_id)
    if as_json:
        click.echo(rows_as_json(rows))
        for problem in problems:  # stdout stays valid JSON
            click.secho(f"warning: {problem}", fg="yellow", err=True)
        return
    if not rows:
        console.print(f"no sweeps in {reader.tracking_uri}")
        return
    if not watch:
        console.print(render_table(rows, problems=problems))
        return
    from rich.live import Live

    with Live(render_table(rows, problems=problems), console=console, auto_refresh=False) as live:
        while not all_terminal(rows):
            time.sleep(interval)
            rows, problems = _rows(rows_of, reader, sweep_id)
            live.update(render_table(rows, title=time.strftime("%H:%M:%S"), problems=problems), refresh=True)
    sweeps = list(dict.fromkeys(row.sweep for row in rows))
    if not console.is_terminal:  # rich's Live leaves its last frame unterminated when piped
        console.print()
    console.print(f"answer:  vitolaunch compare {' '.join(sweeps)}{_store_option(reader.tracking_uri)}"
                  "   (trials ranked by the objective; --group-by KEY, --plot FILE.png)")


def _rows(collect_rows, reader, sweep_id) -> tuple[list, list[str]]:
    try:
        report = collect_rows(reader, sweep_id, update_sweeps=True)
        for problem in report.sweep_problems:  # keeping the sweeps' parent runs true is best effort
            click.secho(f"warning: {problem}", fg="yellow", err=True)
        return report.rows, report.problems
    except VitolaunchError:
        raise
    except Exception as problem:
        raise VitolaunchError(
            f"the tracking server {reader.tracking_uri} is unreachable ({type(problem).__name__}): "
            "check that it is up, or pass --tracking-uri"
        ) from problem


@main.command()
@click.argument("sweeps", nargs=-1, required=True)
@click.option("--group-by", "group_by", metavar="KEY",
              help="Fold a swept key (e.g. train.seed) into mean ± std and count.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one record per trial, or per group).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Plot the objective against a swept parameter (one line per other swept value).")
@click.option("--x", "x_key", metavar="KEY",
              help="The swept key on the plot's x axis [default: the first swept key that varies, seeds last].")
@click.option("--by", "by", metavar="METRIC[:min|max]",
              help="Rank by this metric instead of the sweep's objective, e.g. eval/imagenet/knn20_top1 "
                   "[default mode: max, min for a loss].")
@TRACKING_OPTION
def compare(sweeps: tuple[str, ...], group_by: str | None, as_json: bool, as_csv: bool, plot_file: str | None,
            x_key: str | None, by: str | None, tracking_uri: str | None) -> None:
    """Rank the trials of SWEEPS (names or run ids) by the objective, with swept values and final metrics."""
    from vitolaunch.results import ranking as results
    from vitolaunch.results.compare import collect, render_benchmarks, render_groups, render_trials
    from vitolaunch.tracking.sqlite_reader import open_run_reader
    from vitolaunch.workspace import Workspace, quiet_mlflow_environment

    if as_json and as_csv:
        raise VitolaunchError("--json and --csv: choose one")
    quiet_mlflow_environment()
    workspace = Workspace.from_env()
    uri = _existing_tracking_uri(tracking_uri)
    comparison = collect(open_run_reader(uri, workspace), sweeps, results.parse_ranking(by) if by else None)
    ranking, rows = comparison.ranking, comparison.rows
    groups = results.group(rows, group_by, ranking) if group_by else None
    fold = groups[0].folded if groups else None
    if plot_file:
        from vitolaunch.results.plots import choose_x, objective_plot

        x = results.resolve_key(rows, x_key) if x_key else choose_x(rows, fold)
        objective_plot(rows, ranking, plot_file, x, fold=fold)
        click.echo(f"plot: {plot_file} ({ranking.metric} vs {x})", err=as_json or as_csv)
    records = results.group_records(groups, ranking) if groups is not None else results.as_records(rows, ranking)
    for problem in comparison.problems:
        if as_json or as_csv:
            click.secho(f"warning: {problem}", fg="yellow", err=True)
    if as_json:
        click.echo(results.to_json(records))
    elif as_csv:
        click.echo(results.to_csv(records), nl=False)
    else:
        console = _console()
        console.print(render_groups(comparison, groups) if groups is not None else render_trials(comparison))
        benchmarks = render_benchmarks(comparison) if groups is None else None
        if benchmarks is not None:  # an evaluate sweep: every benchmark's headline, not only the first columns
            console.print(benchmarks)


@main.command()
@click.argument("run_id")
@TRACKING_OPTION
def resume(run_id: str, tracking_uri: str | None) -> None:
    """Continue a trial (RUN_ID) or every unfinished trial of a sweep from the last committed checkpoint."""
    from vitolaunch.tracking.records import TAG_JOB_ID

    launcher = _existing_launcher(tracking_uri)
    resumed = launcher.resume(run_id)
    console = _console()
    if not resumed:
        console.print("nothing to resume: every trial is running, finished or pruned (a pruned trial resumes by its run id)")
    for record in resumed:
        console.print(f"resumed run {record.run_id} ({record.name}) as job {record.tags.get(TAG_JOB_ID)}")


@main.command()
@click.argument("run_id")
@TRACKING_OPTION
def cancel(run_id: str, tracking_uri: str | None) -> None:
    """Cancel a trial (RUN_ID) or every active trial of a sweep. Checkpoints are kept: resume continues."""
    launcher = _existing_launcher(tracking_uri)
    cancelled = launcher.cancel(run_id)
    console = _console()
    if not cancelled:
        console.print("nothing to cancel: no trial is queued or running")
        return
    sweeps = sorted({r.sweep for r in cancelled})
    console.print(f"cancelled {len(cancelled)} trial(s) of {', '.join(sweeps)}; checkpoints kept: "
                  f"`vitolaunch resume {sweeps[0] if len(sweeps) == 1 else 'RUN_ID'}` continues them")
    if len(cancelled) <= 20:  # a handful of run ids helps; thousands on one line do not
        for record in cancelled:
            console.print(f"  {record.run_id}  {record.name}")


@main.command()
@click.argument("run_id")
@click.option("--rank", default=0, show_default=True, help="Which rank's log.")
@click.option("--stderr", "show_stderr", is_flag=True, help="Show stderr instead of stdout.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing as the log grows, until the trial ends.")
@TRACKING_OPTION
def logs(run_id: str, rank: int, show_stderr: bool, follow: bool, tracking_uri: str | None) -> None:
    """Print the log of one rank of a trial, found from its run id alone."""
    launcher = _existing_launcher(tracking_uri)
    path = launcher.log_file(run_id, rank, show_stderr)
    if not path.exists():
        raise VitolaunchError(f"{path} does not exist yet: the trial may still be queued")
    with open(path, errors="replace") as handle:
        while True:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            if not follow or launcher.trial_has_ended(run_id):
                if follow:
                    sys.stdout.write(handle.read())
                return
            time.sleep(1.0)


main.add_command(data_commands)  # vitolaunch data manifest | curate


if __name__ == "__main__":
    main()
