"""The job: its model (what a user asks for), job files and --set, input checks, checkpoint names,
and the plan the workers read with its content hashes. No Prefect."""
