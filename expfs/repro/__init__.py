"""Run a pipeline in a place (a checkout or a mounted workspace) with the run-cache."""
