"""The `vitolaunch` command. Heavy modules (torch, deepspeed, mlflow) load only inside the commands that
need them, so `vitolaunch --help` and `--dry-run` answer instantly."""

from __future__ import annotations

import os
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
    from vitolaunch.launch import Launcher
    from vitolaunch.workspace import Workspace

    return Launcher(Workspace.from_env(), tracking_uri)


def _existing_launcher(tracking_uri: str | None):
    """For commands about runs that must already exist: a missing sqlite store is an error, not created."""
    from vitolaunch.workspace import Workspace

    uri = Workspace.from_env().tracking_uri_or_default(tracking_uri)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise VitolaunchError(f"no sweeps here yet: {uri} does not exist (start one with `vitolaunch sweep SPEC`, "
                              "or point --tracking-uri / VITOLAUNCH_HOME at the store that has them)")
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
    from vitolaunch.spec import check_trials_fit_resources, expand, load_spec, resolve_cluster

    spec = load_spec(spec_file, overrides)
    trials = expand(spec)  # every trial validated before anything is submitted
    if spec.task == "evaluate":  # (checkpoint x grid): the targets are looked up in MLflow and storage
        from vitolaunch.evaluate_targets import expand_evaluate

        trials = expand_evaluate(spec, trials, _launcher(tracking_uri or spec.tracking.uri).registry)
    console = _console()
    if dry_run:
        from vitolaunch.plan import render_plan

        cluster = resolve_cluster(spec.resources)
        console.print(render_plan(spec, trials, cluster))
        if cluster == "slurm":
            _slurm_dry_run(console, spec, trials)
        check_trials_fit_resources(spec, trials)  # after the cluster's facts; a real sweep checks both in preflight
        console.print(f"dry run: {len(trials)} trials, nothing submitted")
        return
    launcher = _launcher(tracking_uri or spec.tracking.uri)
    report = launcher.submit_sweep(spec, trials, retry_failed=retry_failed)
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
    for line in _next_steps(report):
        console.print(line, soft_wrap=True)


def _next_steps(report) -> list[str]:
    """What to run next, verbatim: the commands carry the tracking store when it is not the default one."""
    from vitolaunch.workspace import Workspace

    store = "" if report.tracking_uri == Workspace.from_env().tracking_uri_or_default(None) else f" --tracking-uri {report.tracking_uri}"
    experiment_page = f"#/experiments/{report.experiment_id}"
    if report.tracking_uri.startswith(("http://", "https://")):  # a tracking server serves its own UI
        ui = f"open {report.tracking_uri.rstrip('/')}/{experiment_page}"
    else:
        ui = f"mlflow ui --backend-store-uri {report.tracking_uri}, then open http://127.0.0.1:5000/{experiment_page}"
    return [f"watch:   vitolaunch status {report.sweep_name} --watch{store}", f"compare: {ui}"]


def _slurm_dry_run(console, spec, trials) -> None:
    """The sbatch script, then (where SLURM answers) the partition checks and `sbatch --test-only`."""
    from vitolaunch.backends.slurm import SlurmBackend, render_script
    from vitolaunch.records import trial_job_name
    from vitolaunch.resource_check import check_resources
    from vitolaunch.workspace import Workspace

    resources = spec.resources
    log_root = Workspace.from_env().log_dir(spec.name)
    names = [trial_job_name(spec.name, t.index, t.key) for t in trials]
    backend = SlurmBackend()
    reachable = backend.reachable()
    first = names[: backend.max_array_size()] if reachable else names
    arrays = -(-len(names) // len(first)) if first else 0
    console.print(f"sbatch script ({'first of ' if arrays > 1 else ''}{arrays} array{'s' if arrays > 1 else ''}):")
    click.echo(render_script(resources, first, log_root))
    if not reachable:
        console.print("SLURM is not reachable from here: partition checks and sbatch --test-only skipped")
        return
    check_resources(spec, backend)  # a missing partition, too many nodes, too long: one located error, exit 2
    console.print(f"sbatch --test-only: {backend.test_only(resources, names, log_root)}")


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

    from vitolaunch.status import all_terminal, render_table, rows_as_json
    from vitolaunch.status import collect_rows as _collect

    from vitolaunch.registry_sqlite import open_run_reader
    from vitolaunch.workspace import Workspace, quiet_mlflow_environment

    quiet_mlflow_environment()
    workspace = Workspace.from_env()
    collect_rows = partial(_collect, stalled_after=stalled_after)
    reader = open_run_reader(workspace.tracking_uri_or_default(tracking_uri), workspace)
    console = _console()
    rows, problems = _rows(collect_rows, reader, sweep_id)
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
            rows, problems = _rows(collect_rows, reader, sweep_id)
            live.update(render_table(rows, title=time.strftime("%H:%M:%S"), problems=problems), refresh=True)


def _rows(collect_rows, reader, sweep_id) -> tuple[list, list[str]]:
    problems: list[str] = []
    try:
        return collect_rows(reader, sweep_id, problems=problems), problems
    except VitolaunchError:
        raise
    except Exception as problem:
        raise VitolaunchError(
            f"the tracking server {reader.tracking_uri} is unreachable ({type(problem).__name__}): "
            "check that it is up, or pass --tracking-uri"
        ) from problem


@main.command()
@click.argument("run_id")
@TRACKING_OPTION
def resume(run_id: str, tracking_uri: str | None) -> None:
    """Continue a trial (RUN_ID) or every unfinished trial of a sweep from the last committed checkpoint."""
    from vitolaunch.records import TAG_JOB_ID

    launcher = _existing_launcher(tracking_uri)
    resumed = launcher.resume(run_id)
    console = _console()
    if not resumed:
        console.print("nothing to resume: every trial is running or finished")
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
