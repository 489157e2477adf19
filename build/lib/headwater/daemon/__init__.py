"""The sync daemon: mirror, triggers, webhooks, health, metrics and the sync loop.

config     daemon settings from daemon.yaml, HEADWATER_* variables and flags
mirror     URL checks, credentials, the bare mirror under the state directory
triggers   the pending-trigger board, the waker, timers, the filesystem watch
webhooks   signature checks and push parsing (pure)
server     the HTTP server (stdlib); endpoints: what it answers
metrics    Prometheus metrics in a registry of their own
runtime    what the daemon knows between syncs, and /status bodies
loop       the daemon itself: refresh the mirror, sync each instance, check drift
logs       text or JSON log lines, secrets redacted
"""
