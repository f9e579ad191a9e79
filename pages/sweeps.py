"""Sweeps: methods x options x seeds as submitit jobs over this workspace (:mod:`studies.sweeps`). Run or resume one
here on submitit's local executor, and read every sweep stored in the workspace, however it was run (here, from the
command line, or on SLURM)."""

import streamlit as st

from analysis.fusion_figures import sweep_figure
from studies.sweeps.jobs import sweep_names
from studies.sweeps.launch import run_sweep
from studies.sweeps.spec import EXAMPLE_SWEEP, parse_sweep
from studies.sweeps.table import job_rows, read_sweep, summary_rows
from ui.charts import show_chart, show_command, show_table
from ui.errors import report_errors
from ui.job_view import restore_inputs, show_job, start_job
from ui.options import kept
from ui.state import job_runner, workspace
from ui.tables import dashed_numbers

SWEEP_KIND = "sweep"

st.title("Sweeps")
st.caption(
    "A sweep file names methods, options to grid over, seeds, parents and analyses. Every combination runs as its own "
    "submitit job (in its own process here; as a SLURM job array with `fusionlab sweep FILE` on a cluster), writing "
    "into this workspace. Running a sweep again resumes it: finished jobs are skipped, and models and analyses "
    "already stored are reused."
)
ws = workspace()
restore_inputs(SWEEP_KIND)
with st.form("sweeps.form"):
    kept("sweeps.text", EXAMPLE_SWEEP)
    text = st.text_area("Sweep file (TOML)", height=420, key="sweeps.text")
    submitted = st.form_submit_button("Run or resume on this machine", type="primary")
if submitted:
    with report_errors():
        spec = parse_sweep(text)
        if spec.executor.cluster != "local":
            st.info(f"This sweep asks for {spec.executor.cluster}; from the app it runs on the local executor.")
            spec = spec.local()
        st.session_state["sweeps.latest"] = spec.name
        start_job(f"sweep {spec.name}", run_sweep, ws, spec, kind=SWEEP_KIND, inputs={"sweeps.text": text})
show_job(job_runner().latest(SWEEP_KIND))

names = sweep_names(ws.root)
if not names:
    st.info("No sweep is stored in this workspace yet: run the example above, or `fusionlab sweep FILE`.")
    st.stop()
latest = st.session_state.get("sweeps.latest")
kept("sweeps.name", latest if latest in names else names[-1], names)
name = st.selectbox("Stored sweep", names, key="sweeps.name")
with report_errors():
    table = read_sweep(ws.root, name)
    counts = table.counts()
    done, failed, pending = st.columns(3)
    done.metric("Jobs done", counts["done"])
    failed.metric("Failed", counts["failed"])
    pending.metric("Not run yet", counts["pending"])
    rows = job_rows(table)
    st.subheader("Per method and options, over the seeds")
    summary, summary_config = dashed_numbers(summary_rows(table))
    show_table(summary, f"sweep-{name}-summary", column_config=summary_config)
    show_chart(sweep_figure(rows), f"sweep-{name}")
    st.subheader("Every fusion job")
    jobs, jobs_config = dashed_numbers(rows)
    show_table(jobs, f"sweep-{name}-jobs", column_config=jobs_config)
    st.caption("The same table from the command line:")
    show_command(f"fusionlab sweeps {name} --csv {name}.csv --json")
