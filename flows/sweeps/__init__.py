"""Sweeps over settings: grid expansion, the grid picture and the ranking. No Prefect."""
