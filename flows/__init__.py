"""Orchestration: Prefect flows that schedule ``cohort.pipeline.process_series`` on Dask.

Flows only decide where and when work runs; every step they call is a plain function of
``cohort`` that can be called and tested without Prefect or Dask.
"""
