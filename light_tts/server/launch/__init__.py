"""Starting and watching the server: the launcher (plans the processes from the config, creates shared memory,
starts every process and waits for readiness) and the supervisor (restarts a failed worker or stops the server,
drains on SIGTERM). The top of the stack: may import every other part of the server."""
