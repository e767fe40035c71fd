"""``geolift batch``: fuse many scene pairs on a Dask cluster, resumably (see ``geolift.batch``)."""

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from geolift.cli import EXIT_INTERRUPTED, LineFormatter, app, fail, run_command, setup_logging
from geolift.cli.options import DisplayChoices, OutputChoices, PairChoices, with_options

log = logging.getLogger("geolift")

INTERRUPTED = "interrupted; finished outputs are kept and the next run resumes."

#: Above this many jobs the summary table lists only the failed ones.
TABLE_ROWS = 50


class _CurrentStderr(logging.StreamHandler):
    """Write to whatever ``sys.stderr`` is now, so lines land above rich's live progress bars."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_batch_logging(quiet: bool, log_file: Path) -> list[tuple[logging.Logger, logging.Handler]]:
    """geolift lines on stderr (as every command) and, with timestamps, in the log file.

    Dask's own warnings (a worker died, restarted, ran short of memory) go to the log file too,
    through a second handler: LocalCluster resets the level of every handler on its logger.
    """
    setup_logging(quiet)
    console = _CurrentStderr()
    console.setFormatter(LineFormatter())
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    ours = logging.FileHandler(log_file, encoding="utf-8")
    ours.setFormatter(formatter)
    ours.setLevel(logging.INFO)
    dasks = logging.FileHandler(log_file, encoding="utf-8")
    dasks.setFormatter(formatter)
    dasks.setLevel(logging.WARNING)
    log.handlers[:] = [console, ours]
    log.setLevel(logging.INFO)
    logging.getLogger("distributed").addHandler(dasks)
    return [(log, ours), (logging.getLogger("distributed"), dasks)]


@contextmanager
def _progress_display(mode: str, total: int) -> Iterator[Optional[Callable]]:
    """Yield a JobEvent callback: rich bars (overall + one per running job), plain lines, or nothing."""
    if mode == "none":
        yield None
        return
    finished = {"n": 0}
    lock = threading.Lock()
    terminal = {"done", "skipped", "failed"}

    if mode == "plain":
        last = {"text": ""}

        def plain(event) -> None:
            with lock:
                if event.stage in terminal:
                    finished["n"] += 1
                    text = f"geolift: progress {100.0 * finished['n'] / max(total, 1):.1f}% batch"
                    if text != last["text"]:
                        last["text"] = text
                        print(text, file=sys.stderr, flush=True)

        yield plain
        return

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {"read": "reading", "train": "training", "write": "writing", "retry": "retrying", "queued": "queued"}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    ) as bars:
        overall = bars.add_task("[bold]jobs", total=total)
        rows: dict[str, int] = {}

        def show(event) -> None:
            with lock:
                if event.stage in terminal:
                    bars.advance(overall)
                    if event.job in rows:
                        bars.remove_task(rows.pop(event.job))
                    return
                if event.stage == "queued":
                    return
                if event.job not in rows:
                    rows[event.job] = bars.add_task("", total=None)
                description = f"  {event.job[:40]:<40} {labels.get(event.stage, event.stage):<9}"
                total_steps = event.total or None
                bars.update(rows[event.job], description=description, completed=event.done, total=total_steps)

        yield show


def _print_summary(report, outdir: Path, json_path: Path, csv_path: Path, quiet: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = report.summary()
    console = Console()
    if not quiet:
        rows = report.results if len(report.results) <= TABLE_ROWS else report.failed
        if rows:
            table = Table(title="geolift batch" + ("" if rows is report.results else " (failed jobs)"))
            for column in ("job", "status", "attempts", "seconds", "reason"):
                table.add_column(column, justify="right" if column in ("attempts", "seconds") else "left",
                                 overflow="fold")
            style = {"done": "green", "skipped": "cyan", "failed": "bold red"}
            for r in rows:
                table.add_row(r.job, f"[{style[r.status]}]{r.status}[/]", str(r.attempts), f"{r.seconds:.1f}",
                              r.reason)
            console.print(table)
    typer.echo(
        f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
        f"of {counts['total']} job(s) in {report.seconds:.1f} s. Report: {json_path} and {csv_path.name}."
    )


@app.command("batch")
@with_options(pair=PairChoices, output_choices=OutputChoices, display=DisplayChoices)
def batch(
    manifest: Annotated[Optional[Path], typer.Argument(
        help="CSV manifest: header hsi,msi[,sensor,bands,output,steps,seed,...], one line per job; its cells "
        "override the options below for that job. Relative paths are relative to the manifest's folder. Leave out "
        "to pair --hsi-dir with --msi-dir.",
    )] = None,
    outdir: Annotated[str, typer.Option(
        "--outdir", "-o", help="Output folder (created if missing), or object storage: s3://bucket/prefix (also "
        "gs://, az://, /vsis3/...); then the report and log are written to the current folder.")] = ...,
    hsi_dir: Annotated[Optional[Path], typer.Option("--hsi-dir", help="Pairing mode: folder of HSI scenes.")] = None,
    msi_dir: Annotated[Optional[Path], typer.Option("--msi-dir", help="Pairing mode: folder of MSI scenes.")] = None,
    match: Annotated[Optional[str], typer.Option(
        "--match", help="Pairing mode: regex with one group capturing the scene id in file names "
        "(default: the first date YYYYMMDD); unmatched scenes are paired by footprint overlap.",
    )] = None,
    hsi_glob: Annotated[str, typer.Option("--hsi-glob", help="Pairing mode: which files of --hsi-dir to use.")] = "*",
    msi_glob: Annotated[str, typer.Option("--msi-glob", help="Pairing mode: which files of --msi-dir to use.")] = "*",
    scheduler: Annotated[Optional[str], typer.Option(
        "--scheduler", help="Address of an existing Dask scheduler, e.g. tcp://host:8786 (default: start a "
        "local cluster).",
    )] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, help="Local cluster: worker processes (default: usable cores / --torch-threads).")] = None,
    torch_threads: Annotated[int, typer.Option(
        "--torch-threads", min=1, help="torch threads per task. Part of the result: the output equals geolift "
        "fuse run with this many threads.")] = 1,
    retries: Annotated[int, typer.Option(
        "--retries", min=0, help="Resubmissions of a task whose worker died or hit an I/O or memory error (input "
        "errors are never retried).")] = 2,
    qa: Annotated[bool, typer.Option(
        "--qa", help="Also write each output's reliability layer beside it, as <output name>_qa.tif.")] = False,
    stac: Annotated[bool, typer.Option(
        "--stac", help="Also write a STAC Item beside each output (<output name>.stac.json) and OUTDIR/"
        "collection.json linking them (finished and up-to-date jobs).")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Redo every job, even those whose output is up to date.")] = False,
    pixels_per_task: Annotated[Optional[int], typer.Option(
        "--pixels-per-task", min=1, help="Output pixels per tile task; smaller scenes run as one task. Default: "
        "whole scenes while there are at least as many jobs to run as worker threads, else 512 x 512.")] = None,
    log_file: Annotated[Optional[Path], typer.Option(
        "--log", help="Log file (default: OUTDIR/batch.log, appended).")] = None,
    scratch: Annotated[str, typer.Option(
        "--scratch", metavar="auto|none|FOLDER", help="Where a job written whole (not split into tile tasks) keeps "
        "the consistency step's network output between its two passes, as geolift fuse --scratch: auto, a hidden "
        "folder beside each output; a folder that exists on every worker (a fast local disk); or none, predict "
        "twice.")] = "auto",
    *,
    pair: PairChoices,
    output_choices: OutputChoices,
    display: DisplayChoices,
) -> None:
    """Fuse many HSI/MSI pairs on Dask, resumably: skip up-to-date outputs, retry lost workers, report.

    Writes OUTDIR/batch_report.json and .csv and appends to OUTDIR/batch.log (with OUTDIR on object storage:
    in the current folder).

    Exit code: 0 every job done or up to date, 7 some failed, 6 the batch cannot run, 130 Ctrl-C.
    """
    setup_logging(display.quiet)

    def action():
        from geolift.batch import BatchSettings, dashboard_link, dask_client, pair_folders, read_manifest, run_batch
        from geolift.batch.jobs import output_folder
        from geolift.batch.object_storage import check_remote_folder
        from geolift.errors import BatchError, JobsFailedError
        from geolift.fuse import check_output_options
        from geolift.io.vsi import is_vsi_path

        pairing = hsi_dir is not None or msi_dir is not None
        if manifest is not None and pairing:
            raise BatchError("Give either a MANIFEST or --hsi-dir/--msi-dir, not both.")
        if manifest is None and not (hsi_dir and msi_dir):
            raise BatchError("Give a MANIFEST, or both --hsi-dir and --msi-dir to pair two folders.")
        if scheduler and workers:
            raise BatchError("--workers sizes the local cluster; an existing cluster (--scheduler) keeps its own.")
        if not scheduler and scratch not in ("auto", "none") and not Path(scratch).expanduser().is_dir():
            # (on an existing cluster the folder is the workers' to have: a job there fails with the same sentence)
            raise BatchError(f"The scratch folder {Path(scratch).expanduser()} does not exist.")
        outputs = output_folder(outdir)
        if is_vsi_path(outputs):  # object storage: jobs upload there; the batch's own files stay here
            check_remote_folder(outputs)
            here = Path.cwd()
        else:
            here = Path(outdir)
            try:
                here.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BatchError(f"Cannot create the output folder {here} ({exc.strerror}).") from None
        file_handlers = _setup_batch_logging(display.quiet, log_file or here / "batch.log")
        log.info("geolift batch: %s", " ".join(sys.argv[1:]) or "(library call)")

        defaults = pair.fuse_options(output_choices, scratch=scratch)
        check_output_options(defaults)  # --co/--cog mistakes stop the batch before any job starts
        if manifest is not None:
            jobs = read_manifest(manifest, outputs, defaults)
        else:
            jobs, unmatched = pair_folders(hsi_dir, msi_dir, outputs, defaults, match=match, hsi_glob=hsi_glob,
                                           msi_glob=msi_glob)
            if unmatched:
                log.warning("%d HSI scene(s) have no MSI pair and are left out (see the log).", len(unmatched))
        from geolift.batch.catalog import COLLECTION_FILE

        settings = BatchSettings(torch_threads=torch_threads, retries=retries, force=force,
                                 pixels_per_task=pixels_per_task, qa=qa,
                                 stac_collection=str((outputs / COLLECTION_FILE).absolute()) if stac else None)
        try:
            with dask_client(scheduler, workers, torch_threads) as client:
                n_workers = len(client.scheduler_info().get("workers", {}))
                log.info("Dask: %s, %d worker(s)%s.", scheduler or "local cluster", n_workers,
                         f", {torch_threads} torch thread(s) per task" if torch_threads > 1 else "")
                link = dashboard_link(client)
                if link:
                    log.info("Dask dashboard: %s", link)
                elif not scheduler:
                    log.info("Dask dashboard: off (it needs bokeh: pip install 'geolift[dashboard]').")
                with _progress_display(display.progress_mode, len(jobs)) as callback:
                    report = run_batch(jobs, client, settings, progress=callback)
            json_path, csv_path = report.write(here)
            if stac and not report.interrupted:
                from geolift.batch.catalog import write_batch_catalog

                write_batch_catalog(jobs, report, outputs, qa=qa)
            _print_summary(report, here, json_path, csv_path, display.quiet)
        finally:
            for logger, handler in file_handlers:
                logger.removeHandler(handler)
                handler.close()
        if report.interrupted:
            raise fail(INTERRUPTED, EXIT_INTERRUPTED)
        if report.failed:
            raise JobsFailedError(f"{len(report.failed)} of {len(report.results)} job(s) failed; see {csv_path}.")
        return report

    run_command(action, interrupted=INTERRUPTED)
