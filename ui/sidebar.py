"""The sidebar every page shares: device, workspace and the running job."""

from __future__ import annotations

import streamlit as st
import torch

from fusion.device import describe_device
from ui.job_view import live_job_progress
from ui.state import device, job_runner, workspace_root


def draw_sidebar() -> None:
    """Device in use, workspace path, and the running job with live progress (or how the last one ended)."""
    with st.sidebar:
        st.markdown("**Device**")
        st.caption(describe_device(device()))
        if device().type == "cuda":
            used, total = torch.cuda.mem_get_info(device())[::-1]
            st.caption(f"GPU memory in use: {(used - total) / 2**30:.1f} of {used / 2**30:.0f} GiB")
        st.markdown("**Workspace**")
        st.caption(f"`{workspace_root()}`")
        st.markdown("**Job**")
        runner = job_runner()
        active = runner.active()
        if active is not None:
            live_job_progress(active.id, place="sidebar")
            return
        jobs = runner.jobs()
        st.caption(f"Last: {jobs[0].title} · {jobs[0].status}" if jobs else "No job has run yet.")
