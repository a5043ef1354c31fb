"""Running ftpalg as a service: configuration (file, flags, values), logs, metrics, the
xferlog, SIGHUP reload and dropping privileges. Nothing here imports `ftpalg.proxy`; the
proxy and the CLI import this package."""
