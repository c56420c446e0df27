"""The programs that run beside each CLI server, in its image or under the local fleet's supervisord:

  health   the readiness/liveness probe: a real JSON-RPC round trip (`python3 -m copilot_fleet.pod.health`)
  drain    the preStop hook: wait until no attached session is in a turn (`python3 -m copilot_fleet.pod.drain`)
  janitor  remove sessions past their TTL, never an attached one (`python3 -m copilot_fleet.pod.janitor`)
  wear     how worn a server is (memory, sessions served): the recycle rule of the probe and of `recycle`

and what they read on the machine they run on: procfs (a process's state and memory), ports (who listens where).
What a session directory holds is read through copilot_fleet.sessiondir.

They run in the CLI image, which installs only `copilot-fleet[pod]`: nothing here imports the local fleet
(copilot_fleet.local), which uses these modules, not the other way round; tests/structure/test_import_graph.py
checks that, and that the package has no import loop.
"""
