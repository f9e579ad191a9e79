"""Sweeps: methods x options x seeds over the same library calls, run as submitit jobs on this machine or on SLURM.

:mod:`analysis.sweeps.spec` reads a sweep file and expands it into jobs, :mod:`analysis.sweeps.jobs` is what one job
runs and stores, :mod:`analysis.sweeps.launch` submits the jobs that have not finished and waits for them, and
:mod:`analysis.sweeps.table` reads the results back as a table.
"""
