"""What people see: Prefect artifacts, progress, run logs, and the read-only media server (which
imports no Prefect)."""
