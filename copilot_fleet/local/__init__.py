"""The local fleet: a stack's topology as real processes on 127.0.0.1, owned by one supervisord.

`copilot-fleet up/down/status/target` (copilot_fleet/commands/local.py) call `lifecycle.up`, `lifecycle.down`,
`status.collect` and `targets.read_target`. Modules, one job each:

  paths        the state directory of a stack (.fleet/<stack>/) and its modes
  secrets      generated tokens and passwords, in 0600 files
  tools        finding the CLI, redis-server, haproxy and supervisord, and checking the CLI version
  plan         topology -> the processes to run (commands, env, ports) and the target
  config_files plan -> supervisord.conf, redis.conf, haproxy.cfg
  supervisor   starting supervisord, talking to it over XML-RPC, stopping it by PID
  probes       readiness and health: a JSON-RPC round trip to each CLI, Redis PING, HTTP /healthz
  lbstats      HAProxy's view of each replica (its admin socket)
  stack        which local stack: its platform, its validated spec
  lifecycle    up and down
  status       the status table
  targets      where a stack's target comes from (state file or `pulumi stack output`)

Nothing here imports the Copilot SDK or Pulumi: the commands must stay cheap to import. What /proc says about a
process and who holds a port come from copilot_fleet.pod (procfs, ports), which the programs beside each server use too.
"""

from copilot_fleet.local.errors import LocalFleetError

__all__ = ["LocalFleetError"]
