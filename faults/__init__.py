"""The fault suite: what production does to a fleet, done to a local one, with the figures to show it survives.

Scenarios (one module each; every loop is bounded in count and in time, all traffic is on 127.0.0.1, every
process started is stopped by PID):

- kill.sigkill_mid_turn          SIGKILL a CLI replica mid-turn: sessions resume elsewhere, no completed turn lost
- writers.two_writers            two writers on one session through the fleet client: never two attached at once
- writers.writers_without_lease  the control: without the lease, histories fork (the check can see it)
- lease_store.redis_outage       Redis stopped or frozen: fail closed, held leases not assumed, recovery time
- flapping.replica_flapping      replicas stopped and started behind HAProxy: bounded errors, never a wrong session
- storage.storage_faults         session-state read-only or full: clear errors, no partial session left
- janitor_run.janitor_live       the janitor on a live fleet: only expired, detached sessions and orphan locks go
- restart.restart_identity       a restarted replica keeps its port, COPILOT_HOME and storage
- bad_config.invalid_configs     invalid stack configs: refused naming the key, nothing registered or started
- bad_input.bad_input            bad session ids, other users' ids, broken target files, wrong credentials
- secrets_audit.secrets_audit    no secret in state files, logs, process arguments or rendered manifests

Store mode (session state in Redis through the session filesystem provider), beside the volume mode where it applies,
on processes of their own (`store_fleet.StoreFleet`, driven by `store_app.StoreApp`):

- store_kill.store_sigkill        a CLI SIGKILLed mid-turn (both modes), or the provider (store): the turn is sent
                                  again on another server, no completed turn lost, the CLI dies with its provider
- store_redis.redis_restart       Redis crashed or stopped under a turn (both modes): what is lost, what the
                                  application sees, time to recover
- store_full.store_full           Redis at maxmemory with noeviction: clear refusals, nothing acknowledged lost,
                                  writes resume once space is freed
- store_pause.paused_holders      a lease holder frozen past its TTL, a takeover, the thaw: diverged histories,
                                  store against volume

`runner.run_all` runs them in order, the volume-mode ones against one fleet (`fleet_under_test.FleetUnderTest`),
then the store ones; `benchmarks/reliability.py` is the one command, and writes docs/reliability.md (`report`).
tests/faults/ runs the same code at CI sizes.
"""
