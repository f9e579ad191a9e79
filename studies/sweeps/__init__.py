"""Sweeps: methods x options x seeds over the same library calls, run as submitit jobs on this machine or on SLURM.

:mod:`studies.sweeps.spec` reads a sweep file and expands it into jobs, :mod:`studies.sweeps.jobs` is what one job
runs and stores, :mod:`studies.sweeps.launch` submits the jobs that have not finished and waits for them, and
:mod:`studies.sweeps.table` reads the results back as a table.
"""
