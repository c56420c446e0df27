"""The programs that run beside each CLI server, in its image or under the local fleet's supervisord:

  health   the readiness/liveness probe: a real JSON-RPC round trip (`python3 -m copilot_fleet.pod.health`)
  drain    the preStop hook: wait until no attached session is in a turn (`python3 -m copilot_fleet.pod.drain`)
  janitor  remove sessions past their TTL, never an attached one (`python3 -m copilot_fleet.pod.janitor`)
  wear     how worn a server is (memory, sessions served): the recycle rule of the probe and of `recycle`

and what they read on the machine they run on: procfs (a process's state and memory), ports (who listens where).
"""
