"""Streamlit-side helpers shared by the pages (the library in ``fusion/`` knows nothing of Streamlit).

- :mod:`ui.state`: workspace, device, job runner, the shared model selection
- :mod:`ui.jobs`: the job runner itself (no Streamlit)
- :mod:`ui.job_view`: start a job from a form, show its live progress and outcome
- :mod:`ui.errors`: turn exceptions into messages on the page
- :mod:`ui.forms`, :mod:`ui.parsing`, :mod:`ui.training`: architecture and training fields, text parsing, training jobs
- :mod:`ui.checkpoints`: uploads and downloads; :mod:`ui.tables`: model tables; :mod:`ui.sidebar`: the sidebar
"""
