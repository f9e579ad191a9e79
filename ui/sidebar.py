"""The sidebar every page shares: device, workspace, the running job and the jobs queued behind it."""

from __future__ import annotations

import streamlit as st
import torch

from fusion.device import describe_device
from ui.job_view import cancel_job, live_job_progress
from ui.state import device, job_runner, workspace_root


def draw_sidebar() -> None:
    """Device in use, workspace path, the running job with live progress and the queued ones in the order they run,
    each with a Cancel button (or, when none is left, how the last one ended)."""
    with st.sidebar:
        st.markdown("**Device**")
        st.caption(describe_device(device()))
        if device().type == "cuda":
            used, total = torch.cuda.mem_get_info(device())[::-1]
            st.caption(f"GPU memory in use: {(used - total) / 2**30:.1f} of {used / 2**30:.0f} GiB")
        st.markdown("**Workspace**")
        st.caption(f"`{workspace_root()}`")
        st.markdown("**Jobs**")
        runner = job_runner()
        queue = runner.queue()
        if queue:
            live_job_progress(queue[0].id, place="sidebar")
            for job in queue[1:]:
                st.caption(f"Queued: {job.title}")
                st.button("Cancel", key=f"fusionlab.cancel.sidebar.{job.id}", on_click=cancel_job, args=(job.id,))
            return
        jobs = runner.jobs()
        st.caption(f"Last: {jobs[0].title} · {jobs[0].status}" if jobs else "No job has run yet.")
